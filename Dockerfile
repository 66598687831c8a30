# modelrollout operator image. Multi-stage: wheels are built with compilers in the first
# stage; the final stage has only the runtime and runs as a non-root user.
# (No container engine runs on the development machines: this file is linted by hadolint in
# the tests, not built there.)
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --upgrade pip==24.3.1 \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 modelrollout \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelrollout
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels modelrollout==0.1.0 \
 && rm -rf /wheels
ENV HOME=/tmp MPLCONFIGDIR=/tmp PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["kopf"]
CMD ["run", "-m", "modelrollout.handlers", "--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8081/healthz"]
