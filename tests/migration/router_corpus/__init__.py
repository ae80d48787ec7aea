"""Email Router files for the tests: the hostile and broken ones ``generate.py`` writes beside this
module, and the demo organisation's file that the tenant simulator writes."""

from __future__ import annotations

import uuid
from pathlib import Path

from portal.m365.simulator.entra import Tenant
from portal.m365.simulator.seed import build_seed

CORPUS = Path(__file__).resolve().parent
ROUTER_FILE_NAME = "Microsoft.Crm.Tools.EmailAgent.xml"


def corpus_file(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def demo_router_file(directory: Path) -> bytes:
    """The router configuration the simulator's demo seed writes, built into ``directory``."""
    tenant = Tenant(tenant_id=str(uuid.uuid4()), apps=[], signin_client_id=str(uuid.uuid4()), signin_secret="x")
    build_seed("demo", tenant=tenant, state_dir=directory)
    return (directory / ROUTER_FILE_NAME).read_bytes()
