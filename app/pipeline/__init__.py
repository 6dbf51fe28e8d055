"""The search, one module a stage, in the order a photo goes through them:

1. ``decode``     bytes -> an oriented RGB picture, bounded in bytes and pixels
2. ``signature``  perceptual hash (exact re-use of a registry photo ends here) and colour
3. ``regions``    the whole frame and object proposals (several objects, clutter)
4. ``features``   local keypoints and ``verify_geometry``
5. ``retrieve``   the FAISS index of registry photo vectors (the embedding itself: ``app.embedding``)
6. ``match``      hits merged per artefact, evidence gathered and verified, candidates judged
7. ``calibrate``  evidence -> P(same object) and the verdict thresholds (``calibrations/``)
8. ``search``     ``PhotoSearch``: the stages joined, from bytes to the response
"""
