# Built by gptx through the engine's build API (`gptx images build torch2`); `FROM gptx/base`
# becomes the tag of this checkout's base recipe, which is built first and never pulled.
FROM gptx/base
USER root
# gptx puts the host's trusted certificates in every build context (.gptx/host-ca.crt, empty when
# the host has none): registries behind a TLS-inspecting proxy are reached with them. They are
# used for the install and removed with it.
COPY .gptx/host-ca.crt /tmp/host-ca.crt
RUN set -eu; \
    if [ -s /tmp/host-ca.crt ]; then export PIP_CERT=/tmp/host-ca.crt; fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip; \
    pip install --no-cache-dir --break-system-packages 'torch>=2.5,<3'; \
    DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove python3-pip; \
    rm -rf /var/lib/apt/lists/* /tmp/host-ca.crt /root/.cache
USER agent
WORKDIR /workspace
