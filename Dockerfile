# CPU image of the heritage-match service.
#   docker build -t heritage-match .                       # bakes CLIP ViT-B-32 weights in
#   docker build --build-arg FETCH_CLIP=0 -t heritage-match .   # offline model only
#   docker run -p 8000:8000 -v hm-data:/data heritage-match
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HM_DATA_DIR=/data \
    HM_MODELS_DIR=/opt/heritage-match/models \
    HM_HOST=0.0.0.0 \
    HM_PORT=8000

WORKDIR /opt/heritage-match

# CPU-only torch first, from PyTorch's CPU wheel index: the default wheels bundle CUDA (several GB).
# 2.14.1+cpu satisfies the project's torch==2.14.1 pin, so the next step keeps it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# Dependencies before the code, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
RUN pip install . && pip uninstall -y heritage-match

COPY app app
RUN pip install --no-deps .

ARG FETCH_CLIP=1
RUN mkdir -p "$HM_MODELS_DIR" \
    && if [ "$FETCH_CLIP" = "1" ]; then heritage-match models fetch; fi

# The service user owns its data and its models dir: `models export` (HM_RUNTIME=onnx, onnx-int8,
# openvino), OpenVINO's plan cache and the weights' checksum cache all write beside the weights.
RUN useradd --system --uid 10001 --home-dir /opt/heritage-match hm \
    && mkdir -p /data && chown hm /data && chown -R hm "$HM_MODELS_DIR"
USER hm
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os,urllib.request,sys; port=os.environ.get('HM_PORT','8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"

CMD ["heritage-match", "serve"]
