"""The web interface: photo search for officers, case reports, registrar pages; English, Arabic, French.

``main.py`` mounts it on the app; ``pages.py`` holds what every page shares; ``routes/`` the pages.
"""
