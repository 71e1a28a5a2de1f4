# The demo MCP server image, mcpfleet/demo:dev: the gateway image with mcpfleet-demo as its entry point.
# `--replica {hostname}` makes the whoami tool name the container, so calls spread over replicas show it.
ARG GATEWAY=mcpfleet/mcpfleet:dev
FROM ${GATEWAY}
ARG SOURCE=unknown
LABEL mcpfleet.source=${SOURCE} \
      org.opencontainers.image.title="mcpfleet-demo" \
      org.opencontainers.image.description="The mcpfleet demo MCP server"
EXPOSE 8080
ENTRYPOINT ["/opt/mcpfleet/bin/mcpfleet-demo"]
CMD ["http", "--host", "0.0.0.0", "--port", "8080", "--replica", "{hostname}"]
