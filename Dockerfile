# trauma-node image. CPU by default, with the embedded backends (no model weights).
# For a GPU host with the model backends (MedSigLIP, MedGemma, U-Net):
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg EXTRAS=models -t trauma-node:cuda .
# and mount the weights (or a Hugging Face cache with HF_TOKEN) into the container.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG EXTRAS=""

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 \
    TRAUMA_NODE_DATA_DIR=/data TRAUMA_NODE_HTTP_BIND=0.0.0.0
# The CUDA bases have no Python of their own; the slim base has it already.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; fi

WORKDIR /opt/trauma-node
COPY pyproject.toml README.md ./
COPY node ./node
COPY pipeline ./pipeline
COPY dicom_out ./dicom_out
COPY evaluation ./evaluation
COPY training ./training
COPY config ./config
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
ENV PATH=/opt/venv/bin:$PATH

# Run as an unprivileged user; /data holds the spool and the database.
RUN useradd --system --uid 10001 trauma && mkdir -p /data && chown trauma /data
USER trauma
VOLUME ["/data"]
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python3 -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
ENTRYPOINT ["trauma-node"]
CMD ["serve", "--config", "/opt/trauma-node/config/node.toml"]
