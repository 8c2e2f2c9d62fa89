"""What servegate's serving image holds: its Dockerfile and TorchServe's configuration in it.

The image is TorchServe on Python 3.11 with exactly the packages of a wheelhouse made on the host
(``wheelhouse.py``), the quiet logging and metrics configuration, and a ``config.properties``
with token auth on and ``allowed_urls`` admitting the given prefixes only. Models are either baked
in (archives in the image's model store, loaded at start) or come from a model store mounted at
run time (``container.py``), which is where ``servegate run`` then copies new versions.

Inside the container TorchServe listens on all of the container's addresses (a port can only be
published from there); ``servegate image run`` publishes the management and metrics ports on the
host's loopback only. It runs as a non-root user, from ``/home/model-server/work``, where it
writes its key file and logs (a host directory at run time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from servegate.config import TorchServeSettings
from servegate.errors import ConfigError

#: The standard Python 3.11 image users build from (any Debian- or Ubuntu-based Python 3.11 image
#: works: Java is installed with apt when the base lacks it).
DEFAULT_BASE = "python:3.11-slim"
HOME = PurePosixPath("/home/model-server")
MODEL_STORE = HOME / "model-store"
WORKDIR = HOME / "work"
CONFIG = HOME / "config.properties"
VENV = PurePosixPath("/opt/servegate")
#: TorchServe's own default ports, inside the container.
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082,
         "grpc_inference": 7070, "grpc_management": 7071}
#: The user TorchServe runs as when ``image run`` does not name one (KServe's runAsNonRoot needs
#: a numeric user).
DEFAULT_USER = "1000:1000"
#: Labels servegate reads back from a built image.
LABEL_BAKED = "io.servegate.baked"
LABEL_KIND = "io.servegate.kind"
KIND = "torchserve"


@dataclass(frozen=True)
class ImageRecipe:
    """What ``servegate image build`` puts into one image."""

    tag: str
    base: str = DEFAULT_BASE
    #: Archives baked into the image's model store (``name.vN.mar``), loaded when it starts.
    archives: tuple[Path, ...] = ()
    #: URL prefixes the server may register archives from (``allowed_urls``); none: its store only.
    allowed_url_prefixes: tuple[str, ...] = ()
    #: Minutes TorchServe's keys live (its default: 60).
    token_expiration_min: float | None = None
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value, what in ((self.tag, "tag"), (self.base, "base")):
            if not value or any(c.isspace() or c in "\"'\\$`" for c in value):
                raise ConfigError(f"image {what} must be an image reference, got {value!r}")
        names = [a.name for a in self.archives]
        if len(set(names)) != len(names):
            raise ConfigError(f"two baked archives share a file name: {sorted(names)}")


def config_properties(recipe: ImageRecipe) -> str:
    """The image's ``config.properties``: the same template as a local server's, with the
    container's addresses and paths, and the baked archives loaded at start."""
    from servegate.backends.torchserve.local import render_config

    settings = TorchServeSettings(host="0.0.0.0", insecure_http=True,
                                  allowed_url_prefixes=recipe.allowed_url_prefixes,
                                  token_expiration_min=recipe.token_expiration_min)
    text = ("# servegate's image: the container's own addresses (a port is published from there);\n"
            "# servegate image run publishes management and metrics on the host's loopback only.\n"
            + render_config(settings, PORTS, MODEL_STORE, config_dir=HOME, gpus=recipe.gpus))
    if recipe.archives:
        text += "load_models=" + ",".join(sorted(a.name for a in recipe.archives)) + "\n"
    return text


def dockerfile(recipe: ImageRecipe) -> str:
    """The Dockerfile: the venv built from the wheelhouse in a first stage (so the wheels never
    reach the image's layers), then Java if the base lacks it, the venv, the configuration and
    the baked archives. Only Dockerfile instructions the classic builder knows (the Docker API's
    ``/build``, which the docker SDK drives)."""
    labels = {LABEL_KIND: KIND, LABEL_BAKED: ",".join(sorted(a.name for a in recipe.archives)),
              "org.opencontainers.image.title": "servegate TorchServe", **recipe.labels}
    label_line = " ".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    command = ["torchserve", "--start", "--foreground", "--ncs", f"--model-store={MODEL_STORE}",
               f"--ts-config={CONFIG}"]
    return f"""\
# servegate's TorchServe image (servegate image build). Base: {recipe.base}
FROM {recipe.base} AS venv
COPY wheelhouse /wheelhouse
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), \\
      "servegate needs a Python 3.11 base image, got " + sys.version' \\
 && python3 -m venv {VENV} \\
 && {VENV}/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \\
      --find-links /wheelhouse -r /wheelhouse/requirements.txt -c /wheelhouse/constraints.txt

FROM {recipe.base}
RUN command -v java >/dev/null || {{ apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless \\
 && rm -rf /var/lib/apt/lists/*; }}
COPY --from=venv {VENV} {VENV}
COPY config/ {HOME}/
COPY model-store/ {MODEL_STORE}/
RUN mkdir -p {WORKDIR} && chown {DEFAULT_USER} {WORKDIR} && chmod -R a+rX {HOME}
ENV PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin \\
    HOME={WORKDIR} LOG_LOCATION={WORKDIR}/logs METRICS_LOCATION={WORKDIR}/logs TEMP=/tmp
WORKDIR {WORKDIR}
USER {DEFAULT_USER}
EXPOSE {PORTS["inference"]} {PORTS["management"]} {PORTS["metrics"]}
LABEL {label_line}
CMD {json.dumps(command)}
"""
