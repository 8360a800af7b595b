# Image of the countries pipeline for a Prefect Docker work pool (prefect.docker.yaml).
# Base: the official Prefect image of the version pinned in requirements.txt
# (tests/test_dockerfile.py keeps the two in step).
FROM prefecthq/prefect:3.9.1-python3.11

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

# The user flow runs run as: no root, no login shell, a home for PREFECT_HOME.
RUN groupadd --system --gid 10001 countries \
    && useradd --system --uid 10001 --gid countries --shell /usr/sbin/nologin \
       --create-home --home-dir /home/countries countries

# prefect.docker.yaml's pull step sets this directory as the flow runs' working directory.
WORKDIR /opt/prefect/countries

# Exactly the pinned runtime requirements, without pip's cache. This layer is
# rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code, owned by root and read-only for the runtime user, installed as the
# package (editable: `import flows` is this directory, which deployments run from).
# Its dependencies are the ones above (pyproject.toml reads requirements.txt).
COPY pyproject.toml ./
COPY flows/ ./flows/
COPY blocks/ ./blocks/
COPY prefect.yaml prefect.docker.yaml ./
RUN pip install --no-cache-dir --no-deps -e .

USER 10001:10001
ENV HOME=/home/countries \
    PREFECT_HOME=/home/countries/.prefect
