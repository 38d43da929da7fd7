"""`clipblip serve`: model folders over HTTP, in this process or on Ray Serve."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from .progress import progress


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.server import api_key, listening_socket, parse_folders

    folders = parse_folders(args.folders)
    key = api_key(args.api_key)
    if args.emit_config is not None or args.ray:
        from ..serve import ray_app

        if args.db is not None:
            raise UsageError("--db: search is served by the single-process server only (leave out --ray)")

        options = dict(host=args.host, port=args.port, provider=args.provider, threads=args.threads,
                       max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                       max_request_bytes=args.max_request_bytes, key=key, replicas=args.replicas,
                       max_image_pixels=args.max_image_pixels)
        if args.emit_config is not None:
            ray_app.emit_config(folders, args.emit_config, force=args.force, **options)
            print(f"wrote {args.emit_config}", file=sys.stderr)
            return 0
        if not (args.ray_address or os.environ.get("RAY_ADDRESS")):  # a local cluster: its proxy listens here
            listening_socket(args.host, args.port).close()  # a taken port is said now, not by a Ray actor
        ray_app.serve_on_ray(folders, address=args.ray_address, say=progress, **options)
        return 0
    if args.replicas is not None or args.ray_address is not None:
        raise UsageError("--replicas and --ray-address need --ray")
    from ..serve.server import serve_folders

    try:
        serve_folders(folders, host=args.host, port=args.port, provider=args.provider, threads=args.threads,
                      max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                      max_request_bytes=args.max_request_bytes, key=key, max_image_pixels=args.max_image_pixels,
                      db=args.db, say=progress)
    except KeyboardInterrupt:  # uvicorn has answered every accepted request, then passed the signal on
        pass
    progress("server stopped")
    return 0
