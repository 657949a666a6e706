# tunegate gateway image: slim, non-root, config baked in at /app/config (mount your own
# over it), health checked on /healthz.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY service ./service
RUN pip install . && useradd --system --uid 10001 --home-dir /app tunegate
COPY config ./config

USER tunegate
ENV TUNEGATE_CONFIG=/app/config/gateway.yaml \
    PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["tunegate", "serve", "--host", "0.0.0.0", "--port", "8000"]
