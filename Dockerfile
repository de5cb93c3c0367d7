# Trickles replica or sprayer image: `docker build -t trickles .` (see deploy/docker-compose.yml).
FROM python:3.11-slim

# The package is installed (not run from the source tree), then the source is dropped.
COPY . /tmp/src
RUN pip install --no-cache-dir /tmp/src && rm -rf /tmp/src \
    && useradd --system --uid 10001 --home-dir /srv trickles \
    && mkdir -p /srv/www && chown trickles /srv/www

USER trickles
WORKDIR /srv
EXPOSE 8080/udp 8080/tcp 9100/tcp

# A PROXY LOCAL probe from inside the container: replicas trust 127.0.0.1, the sprayer answers
# probes from loopback. Exit 0 only if the process answered.
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
    CMD ["trickles", "cluster", "probe", "127.0.0.1:8080"]

ENTRYPOINT ["trickles"]
CMD ["serve", "/srv/www", "--listen", "0.0.0.0:8080", "--key-file", "/run/secrets/cluster_key"]
