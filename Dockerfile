# One image for the API (default command) and the worker (`python -m worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN useradd --system --create-home --uid 10001 nurture \
    && mkdir /data \
    && chown nurture:nurture /data

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
# Compiled now: the image writes no bytecode at run time (PYTHONDONTWRITEBYTECODE).
RUN pip install --no-deps . && python -m compileall -q /app

USER nurture
# No secret is baked in: the API and the worker refuse to start until NURTURE_TRACKING_SECRET,
# NURTURE_EMAIL_WEBHOOK_SECRET (API) and NURTURE_WEBHOOK_SECRET (worker) are set at run time
# (docker run -e ..., or docker-compose.yml, which requires all three).
ENV NURTURE_DATA_DIR=/data \
    NURTURE_API_HOST=0.0.0.0 \
    NURTURE_API_PORT=8000
VOLUME ["/data"]
EXPOSE 8000

CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
