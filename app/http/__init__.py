"""What the API (``app/api``) and the web pages (``app/web``) share: ASGI middleware, the error
envelope and its handlers, request dependencies and bounded upload reading, and the search as a key
runs it (``audited_search``). Both import this package; neither imports the other."""
