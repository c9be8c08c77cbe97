# The service image: FFmpeg, the pinned Python dependencies, the code; runs as
# an unprivileged user. The same image runs the one-shot migration
# (`python -m db.apply`, see compose.yaml).
# The analyser's compiled loop (converter/_measure.c), built where a compiler is:
# the image that runs the service has none.
FROM python:3.11-slim AS measure
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY converter/__init__.py converter/build_measure.py converter/_measure.c converter/
RUN python -m converter.build_measure

FROM python:3.11-slim

# FFmpeg from the distribution; its version follows the base image's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.txt

COPY app.py settings.py ./
COPY handlers/ handlers/
COPY service/ service/
COPY converter/ converter/
COPY --from=measure /build/converter/ converter/
COPY db/ db/

RUN groupadd --system --gid 10001 mp3 \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mp3
USER 10001:10001

ENV PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]

# SIGTERM (docker stop): the service stops accepting, lets in-flight uploads
# finish for SHUTDOWN_TIMEOUT_S, then cancels the rest, which roll back.
STOPSIGNAL SIGTERM
CMD ["python", "app.py"]
