# Slim runtime image: the same install steps as `make install`, without test extras.
FROM python:3.11-slim

WORKDIR /opt/courtyard
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY drivers ./drivers
COPY schemas ./schemas
COPY simulators ./simulators
COPY scenarios ./scenarios
RUN python -m pip install --no-cache-dir . \
 && useradd --system --home-dir /var/lib/courtyard --create-home courtyard \
 && mkdir -p /etc/courtyard \
 && chown courtyard /var/lib/courtyard

USER courtyard
WORKDIR /var/lib/courtyard
ENV COURTYARD_DATA=/var/lib/courtyard
VOLUME ["/var/lib/courtyard"]
ENTRYPOINT ["courtyard"]
CMD ["run", "-c", "/etc/courtyard/config.yaml"]
