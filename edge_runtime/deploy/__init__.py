"""Signed model bundles and their A/B install on a vehicle computer (``edge-deploy``; docs/deploy.md).

Host side: :mod:`.bundle` builds a deterministic, Ed25519-signed bundle (model, run configuration,
the runtime and its dependencies as wheels for the target platform, a manifest with the sha256 of
every file); :mod:`.push` uploads it over the system OpenSSH client and runs the vehicle agent.
Vehicle side: :mod:`.vehicle` verifies the bundle with the vehicle's trusted key, installs it into
the inactive slot, health-checks it (``edge-run --selftest``), switches the ``current`` link
atomically, restarts the service and rolls back when it does not stay up.

Torch-free: the agent runs on the vehicle.
"""
