"""picker's own plugins, by type name (see ``registry`` for adding more from other
packages). ``precise_prefix`` is imported on first use: it needs the optional
dependencies of ``pip install 'picker[precise]'``."""

from __future__ import annotations

from picker.scheduling.filters import LoraFilter
from picker.scheduling.framework import Handle, Params, Plugin, PluginFactory
from picker.scheduling.pickers import (
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomPicker,
    RoundRobinPicker,
)
from picker.scheduling.scorers.load import (
    KVCacheScorer,
    LeastInflightScorer,
    QueueScorer,
    RunningScorer,
    TokenLoadScorer,
)
from picker.scheduling.scorers.lora import LoraAffinityScorer
from picker.scheduling.scorers.prefix import PrefixScorer
from picker.scheduling.scorers.ttft import PredictedLatency
from picker.scheduling.testing import HeaderSelectionFilter, ServedEndpointEcho


def _precise_prefix(name: str, params: Params, handle: Handle) -> Plugin:
    from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer

    return PrecisePrefixScorer(name, params, handle)


_CLASSES: tuple[type[Plugin], ...] = (
    LoraFilter,
    LeastInflightScorer,
    QueueScorer,
    RunningScorer,
    TokenLoadScorer,
    KVCacheScorer,
    LoraAffinityScorer,
    PrefixScorer,
    PredictedLatency,
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomPicker,
    RoundRobinPicker,
    HeaderSelectionFilter,
    ServedEndpointEcho,
)

BUILTIN: dict[str, PluginFactory] = {cls.type: cls for cls in _CLASSES}
BUILTIN["precise_prefix"] = _precise_prefix
BUILTIN["predicted_ttft"] = PredictedLatency  # its first name
