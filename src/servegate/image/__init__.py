"""servegate's TorchServe serving image, built and run through the Docker API (``docker`` SDK)
against whatever engine ``DOCKER_HOST`` names: ``recipe`` (what it holds), ``wheelhouse`` (its
packages), ``build``, ``container`` (run and stop), ``debian_base`` (a base made locally)."""
