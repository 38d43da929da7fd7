"""Joining a Ray cluster: the one place where ``clipblip serve --ray`` and ``clipblip index --ray`` connect.

What Ray 2.60 does (measured; docs/serving.md, "Ray clusters and token authentication"):

* ``ray start --head`` turns token authentication on when RAY_AUTH_MODE=token, or when RAY_AUTH_MODE is
  unset and a token is found where Ray looks: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names,
  else ``~/.ray/auth_token``. A local ``ray.init()`` turns it on too, and writes that file if it is missing.
* A driver given an address sends its token only when its own RAY_AUTH_MODE is ``token``; refused, its
  ``ray.init`` retries for 20 s and raises a bare ``ConnectionError``. At an address where nothing
  answers, ``ray.init`` waits for minutes.

So before ``ray.init`` this module asks the cluster's GCS for the cluster id (one gRPC call of a few
milliseconds): without a token; if the GCS wants one, with the header Ray itself would send. The answers
set this process's RAY_AUTH_MODE to what the cluster asks for, and every failure is one
:class:`RayClusterError` line that says what to set. The token is never printed or logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RayClusterError, UsageError

__all__ = ["check_cluster", "cluster_address", "connect"]

AUTH_MODE = "RAY_AUTH_MODE"
PROBE_TIMEOUT_S = 10.0
HOW_TO_GET_THE_TOKEN = ("`ray get-auth-token` on its head node prints it; or set RAY_AUTH_TOKEN_PATH to a file "
                        "holding it, or copy the head node's ~/.ray/auth_token here")


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else RAY_ADDRESS; None when a local cluster is to be started."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, *, cpus: int, logging_level: str = "WARNING") -> None:
    """``ray.init`` for this process: join the cluster at ``address`` (host:port as ``ray start --head``
    prints it, or ``auto``), authenticated as it asks; without one, start a local cluster of ``cpus``."""
    import ray

    if address is None:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging_level,
                 log_to_driver=False)
        return
    gcs = check_cluster(address)
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=gcs, logging_level=logging_level, log_to_driver=False)
    except (ConnectionError, AuthenticationError) as e:  # it answered a moment ago: gone, or changed
        raise RayClusterError(f"the Ray cluster at {address}: {' '.join(str(e).split())}") from None


def check_cluster(address: str) -> str:
    """The GCS address of the cluster at ``address``, which answers and accepts this process; its
    RAY_AUTH_MODE now set as the cluster asks. RayClusterError (or UsageError for a malformed address)."""
    gcs = gcs_address(address)
    authenticate(gcs, address)
    return gcs


def gcs_address(address: str) -> str:
    """host:port of the cluster's GCS; ``auto``: the cluster ``ray start`` last started on this machine."""
    if address.startswith("ray://"):
        raise UsageError(f"Ray address {address}: a Ray Client address; give the cluster's address (host:port, "
                         f"as `ray start --head` prints it)")
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            return canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as e:
            raise RayClusterError(f"Ray address auto: {' '.join(str(e).split())}") from None
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise UsageError(f"Ray address {address!r}: not host:port (as `ray start --head` prints it)")
    return address


def authenticate(gcs: str, shown: str) -> None:
    """Set this process's RAY_AUTH_MODE to what the cluster at ``gcs`` asks for, or RayClusterError.

    RAY_AUTH_MODE set to another of Ray's modes (``k8s``) is left as it is: only reachability is checked."""
    import grpc

    mode = os.environ.get(AUTH_MODE, "").lower()
    status = probe(gcs, shown, {})
    if mode not in ("", "token", "disabled"):
        return
    if status == grpc.StatusCode.OK:  # no token wanted: none is sent, even where one is set
        if mode == "token":
            set_mode("disabled")
        return
    header = token_header(shown)
    if probe(gcs, shown, header) != grpc.StatusCode.OK:
        raise RayClusterError(f"the Ray cluster at {shown} refused the token in {token_source()}: set "
                              f"RAY_AUTH_TOKEN to the cluster's own token ({HOW_TO_GET_THE_TOKEN})")
    set_mode("token")


def probe(gcs: str, shown: str, header: dict[str, str]) -> "grpc.StatusCode":
    """The status of one GetClusterId call to the GCS: OK or UNAUTHENTICATED; else RayClusterError."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_TIMEOUT_S,
                              metadata=list(header.items()))
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                return e.code()
            detail = " ".join((e.details() or "").split())[:200]
            raise RayClusterError(f"no Ray cluster answers at {shown} ({e.code().name}: {detail}): start one with "
                                  f"`ray start --head`, and give the address it prints (--ray-address or "
                                  f"RAY_ADDRESS)") from None


def token_header(shown: str) -> dict[str, str]:
    """The authorization header Ray sends, from the token where Ray looks; RayClusterError if there is none."""
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # Ray's sources as they are now, not as they were when it last looked
    try:
        header = loader.get_token_for_http_header(ignore_auth_mode=True)
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH names a file that cannot be read, or an empty one
        raise RayClusterError(f"the Ray cluster at {shown} requires token authentication, and "
                              f"RAY_AUTH_TOKEN_PATH={os.environ.get('RAY_AUTH_TOKEN_PATH')} cannot be read or is "
                              f"empty: set it to a file holding the cluster's token") from None
    if not header:
        raise RayClusterError(f"the Ray cluster at {shown} requires token authentication and no token is set "
                              f"here: set RAY_AUTH_TOKEN to its token ({HOW_TO_GET_THE_TOKEN})")
    return header


def token_source() -> str:
    """Where Ray found the token (its order: the variable, the file it names, the default file)."""
    if "RAY_AUTH_TOKEN" in os.environ:
        return "RAY_AUTH_TOKEN"
    if "RAY_AUTH_TOKEN_PATH" in os.environ:
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return str(Path.home() / ".ray" / "auth_token")


def set_mode(mode: str) -> None:
    """RAY_AUTH_MODE for this process and the Ray config it has already read (as Ray's own ray.init does)."""
    from ray._raylet import Config

    os.environ[AUTH_MODE] = mode
    Config.initialize("")
