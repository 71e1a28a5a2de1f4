# The gateway image, mcpfleet/mcpfleet:dev. Built by docker/build-images.sh (`make images`), with the wheels of
# mcpfleet and its runtime dependencies as the build context and no network.
ARG BASE=mcpfleet/base:bookworm

FROM ${BASE} AS install
# Marks this stage's image, which the legacy builder keeps untagged, so build-images.sh can prune it.
LABEL mcpfleet.stage=install
COPY . /wheels/
RUN python3 -m venv /opt/mcpfleet \
 && PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/mcpfleet/bin/pip install --no-index --find-links /wheels mcpfleet \
 && /opt/mcpfleet/bin/mcpfleet --version

FROM ${BASE}
ARG SOURCE=unknown
LABEL mcpfleet.source=${SOURCE} \
      org.opencontainers.image.title="mcpfleet" \
      org.opencontainers.image.description="mcpfleet: a gateway for MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"
# A user of its own, written into passwd directly: the essential Debian base has no useradd.
RUN echo 'mcpfleet:x:10001:10001:mcpfleet:/home/mcpfleet:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'mcpfleet:x:10001:' >> /etc/group \
 && mkdir -p /home/mcpfleet /etc/mcpfleet \
 && chown 10001:10001 /home/mcpfleet
COPY --from=install /opt/mcpfleet /opt/mcpfleet
ENV PATH=/opt/mcpfleet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/mcpfleet \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MCPFLEET_REGISTRY=/etc/mcpfleet/mcpfleet.yaml
USER 10001:10001
WORKDIR /home/mcpfleet
EXPOSE 8000
ENTRYPOINT ["/opt/mcpfleet/bin/mcpfleet"]
# Listens on every address of the container; mount the registry at /etc/mcpfleet/mcpfleet.yaml.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
