"""The committed gRPC modules are what scripts/gen-protos makes from the committed .proto files."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (the test extra installs it)")
pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_modules_are_up_to_date():
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gen-protos"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
