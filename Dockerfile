# modelrollout image: the operator (`kopf run`, the entrypoint) and the model server
# (`modelrollout serve`, as the command of model pods). Multi-stage: the first stage installs
# into a virtual environment; the final one has only the runtime and runs as a non-root user.
#
# BASE defaults to the public image users pull. hack/controlplane image builds this very file
# with --build-arg BASE=localhost/modelrollout-base:bookworm-py311 (Debian bookworm's Python
# 3.11 from mmdebstrap), because no registry is reachable where the tests run.
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/modelrollout \
 && /opt/modelrollout/bin/pip install --no-cache-dir --upgrade pip==24.3.1 \
 && /opt/modelrollout/bin/pip install --no-cache-dir --no-compile . \
 && /opt/modelrollout/bin/python -m compileall -q /opt/modelrollout/lib

FROM ${BASE}
# A passwd entry for the runtime user: kopf names its peer identity after it (getpass.getuser()).
RUN groupadd --gid 10001 modelrollout \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin modelrollout
COPY --from=build /opt/modelrollout /opt/modelrollout
ENV PATH=/opt/modelrollout/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp MPLCONFIGDIR=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["kopf"]
CMD ["run", "-m", "modelrollout.handlers", "--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8081/healthz"]
