"""The endpoint's contract with its callers: its limits on what one request may ask of it, the one place
for them, and the request for its model's breeds.

Whoever calls the endpoint (the API, or anyone with InvokeEndpoint rights) gets a 4xx past these, before any
pixel is decoded. The API must never send what the endpoint refuses, and its tests check its own limits
against these, so this module holds constants only: importing it costs no torch, numpy or Pillow.
"""

# InvokeEndpoint's payload limit (6 MB); SageMaker refuses bigger bodies before they reach the container.
MAX_BODY_BYTES = 6_291_456
# A 6 MB body of tiny images could otherwise ask for thousands of 600 KB input arrays.
MAX_INSTANCES = 64
# Decoded pictures wait in memory until predict_fn, and a few KB of PNG can decode to hundreds of MB: cap
# the pixels of one image (a 12 MP photo passes; the API sends a few hundred a side anyway) and of a request.
MAX_IMAGE_PIXELS = 40_000_000
MAX_REQUEST_PIXELS = 100_000_000
# Longer side / shorter side. The model sees the centred square of the shorter side, so a thin strip tells it
# next to nothing, while its long side is what scaling the short side up multiplies (8000 x 2 would become
# 1,024,000 x 256). Panoramas stay under 20:1.
MAX_ASPECT_RATIO = 20
# The longest side of any image (WebP's own limit); with the ratio above it bounds the rows and columns any
# decoder or resize works through.
MAX_IMAGE_SIDE = 16_384

# An InvokeEndpoint request whose Accept is this asks for the model's breeds instead of a classification; its
# body is not read (send `{}` as application/json). The answer, which only ever gains fields:
#     {"breeds": [{"label": "Labrador_retriever", "breed": "Labrador retriever"}, ...],
#      "model": {"name": "dogbreeds", "version": "1"}}
# the labels in the model's class order, each with its display name (classifier.model.breed_name). The API
# (chalicelib/invoke.py, a copy a test keeps equal) answers GET /breeds with it.
BREEDS_ACCEPT = "application/vnd.dogbreeds.breeds+json"
