# One image for every Stratus service; the command picks the service:
#   docker run stratus                                  # gateway (the default)
#   docker run stratus python -m services.worker        # scheduler, worker, datamover
#   docker run stratus alembic upgrade head             # migrations
# Health checks live in docker-compose.yml (each service's /readyz), not in the image.
#
# BASE_IMAGE: any image with Python 3.11+ whose `python` and `pip` are on PATH; `make images`
# builds one from Debian's packages (stratus-offline/base) where no registry answers:
#   docker build --build-arg BASE_IMAGE=stratus-offline/base:latest -t stratus:latest .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is reused until it changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY migrations ./migrations
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stratus \
    && mkdir -p /home/stratus/.cache/stratus/numba \
    && chown -R stratus:stratus /home/stratus/.cache
USER stratus

ENV STRATUS_HOST=0.0.0.0 \
    STRATUS_NUMBA_CACHE_DIR=/home/stratus/.cache/stratus/numba

# The cpu kernels compiled once, into numba's on-disk cache: a worker's first start loads them
# instead of compiling (a new named volume mounted there starts as a copy of this folder).
RUN NUMBA_CACHE_DIR=$STRATUS_NUMBA_CACHE_DIR \
    python -c "from services.worker.kernels.registry import warm_all; warm_all('cpu')"

EXPOSE 8000
CMD ["python", "-m", "services.gateway"]
