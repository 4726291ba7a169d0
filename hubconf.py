"""torch.hub entries, one per registered upstream (``upstream.list_upstreams()``).

    model = torch.hub.load("<path to this checkout>", "ssast_patch_400", ckpt="SSAST-Base-Patch-400.pth",
                           source="local")
    out = model([wav_16k])          # hidden_states, last_hidden_state, clip, lengths (upstream/interface.py)

Each entry takes s3prl's arguments, ``(ckpt=None, model_config=None, refresh=False, **overrides)``, and
returns :class:`astbench.s3prl.UpstreamExpert`, which s3prl's runner and ``Featurizer`` accept as they are.
"""
import upstream as _upstreams
from astbench.s3prl import hub_entry as _hub_entry

dependencies = ["torch", "numpy", "soundfile", "soxr", "yaml", "tqdm"]

_ENTRIES = {name: _hub_entry(name) for name in _upstreams.list_upstreams()}


def __getattr__(name: str):  # torch.hub looks entries up by name in dir(hubconf) (PEP 562)
    if name in _ENTRIES:
        return _ENTRIES[name]
    raise AttributeError(f"hubconf has no entry {name!r}; entries: {', '.join(_ENTRIES)}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ENTRIES])
