# Image of the control plane: the `controlplane` command with the package installed from this tree.
#
#   docker build -t llm-controlplane:local .
#   docker build -t llm-controlplane:local --build-arg EXTRAS=text,dashboard,finetune .
#
# EXTRAS picks the optional dependencies of pyproject.toml. The default leaves out `finetune`,
# because torch from PyPI brings about 3 GB of CUDA libraries; add it where the image runs LoRA jobs.
# docker-compose.yml builds this image for its migrate and worker services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG EXTRAS=text,dashboard

WORKDIR /opt/controlplane
# Only the files the package build reads, so the local .venv and state directories stay out of the image.
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY streams ./streams
COPY dashboards ./dashboards
COPY migrations ./migrations
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home --uid 10001 controlplane
USER controlplane
WORKDIR /home/controlplane
# Compiles the Hyperscan patterns of the safety detectors into ~/.cache/controlplane/hyperscan
# once, so that a worker does not spend about 20 s on it at each start.
RUN python -c "from controlplane.detectors.safety import SafetyScorer; SafetyScorer(use_embeddings=False).score([('hello', 'hi')])"

CMD ["controlplane", "worker"]
