"""Where pretrained (ImageNet) weights come from, shared by the encoders and LossNet: whether a
weights host can be reached (so that an offline machine fails at once with our message rather
than after a minute of retries), local weight files read without unpickling, and the one error.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import Tensor

from condseg.errors import WeightsUnavailableError, first_line
from condseg.filekind import file_kind, is_torch_file, refuse_special


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def read_state_dict(path: str | Path, option: str) -> dict[str, Tensor]:
    """The tensors of a local weights file: safetensors, or a torch file read with
    ``weights_only=True`` (a planted file cannot run code). ``option`` is the setting that named
    the file, for the error message."""
    path = Path(path)
    refuse_special(path, "weights file", WeightsUnavailableError,
                   f"pass the file itself with {option}=PATH")
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file not found: {path}; pass an existing file with {option}=PATH"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if not is_torch_file(path):
            raise ValueError(f"it looks like {file_kind(path)}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's advice (weights_only=False) would run it
        raise WeightsUnavailableError(
            f"{path} holds Python objects besides tensors: refused unread, since loading it "
            f"could run code; pass a safetensors file or a plain state dict with {option}=PATH"
        ) from error
    except Exception as error:  # torch and safetensors fail in many ways on a foreign file
        raise WeightsUnavailableError(
            f"{path} cannot be read as a state dict ({first_line(error)}); pass a safetensors "
            f"file or a plain PyTorch state dict with {option}=PATH"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"{path} is not a plain state dict of tensors; pass one with {option}=PATH"
        )
    return state
