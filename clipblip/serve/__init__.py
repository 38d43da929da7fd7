"""Serve model folders over HTTP (FastAPI on uvicorn, or Ray Serve across a cluster); never imports torch.

``create_app`` builds the API over a backend; ``LocalBackend`` batches on in-process engines;
``serve_folders`` loads folders and runs the server, as ``clipblip serve`` does.
"""

from .app import ApiError, Backend, Metrics, Settings, create_app
from .local import LocalBackend
from .server import load_services, parse_folders, serve_folders
from .service import Job, JobResult, ModelService

__all__ = ["ApiError", "Backend", "Job", "JobResult", "LocalBackend", "Metrics", "ModelService", "Settings",
           "create_app", "load_services", "parse_folders", "serve_folders"]
