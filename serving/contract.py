"""The endpoint's wire contract: the media types it speaks (the request for its model's breeds among
them), its defaults, and its limits on what one request may ask of it. The one place for them on the
endpoint's side.

Whoever calls the endpoint (the API, or anyone with InvokeEndpoint rights) gets a 4xx past these limits,
before any pixel is decoded. The Lambda ships alone and keeps its own copy in chalicelib/settings.py; the
tests keep the two equal (tests/test_limits.py). Constants only: importing this costs no torch, numpy or
Pillow.
"""

JSON = "application/json"
JPEG = "image/jpeg"
PNG = "image/png"
WEBP = "image/webp"
X_IMAGE = "application/x-image"  # what Batch Transform jobs send
OCTET_STREAM = "application/octet-stream"
# The answer is JSON either way; asking for this type is asking for errors in place, one record per image
# (Batch Transform, and JSON batches from the batch command and the API).
RECORD_JSON = "application/vnd.dogbreeds.record+json"
# One image per request, its bytes as the body; Pillow tells the format from the bytes, not from the header.
IMAGE_CONTENT_TYPES = (JPEG, PNG, WEBP, X_IMAGE, OCTET_STREAM)

DEFAULT_TOP_K = 5
# The container's environment: `python -m training.jobs promote` names the Model Registry package it deploys,
# and answers name its version (serving/identity.py).
MODEL_PACKAGE_ENV = "DOGBREEDS_MODEL_PACKAGE_ARN"
MODEL_VERSION_ENV = "DOGBREEDS_MODEL_PACKAGE_VERSION"
# The production variant every endpoint of ours has (SageMaker names it in answers and metrics).
PRODUCTION_VARIANT = "AllTraffic"
# Images per model call. On 2 shared cores ONNX Runtime's cost per image is flat up to batches of 4 and
# grows past them; clients that send JSON batches send this many per request, one model call each.
MODEL_BATCH = 4

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
# (chalicelib/settings.py, a copy a test keeps equal) answers GET /breeds with it.
BREEDS_ACCEPT = "application/vnd.dogbreeds.breeds+json"
