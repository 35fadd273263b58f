"""GPU (device) and node SKUs: memory, peak compute, memory bandwidth, prices, topology.

Sources:
    * ``memory_gb``: Vidur's ``vidur/config/device_sku_config.py`` (``total_memory_gb``;
      the planner multiplies it by 1024**3, so it is really GiB). Vidur lists the A40 as
      45 (the board has 48 GB; Vidur leaves headroom). H200 is not in Vidur: 141 from
      NVIDIA's H200 datasheet.
    * ``fp16_tflops`` / ``hbm_gbps``: NVIDIA datasheets, peak *dense* (no sparsity) FP16
      tensor-core TFLOP/s and memory bandwidth in GB/s: A40 149.7 / 696 (GDDR6),
      A100 80GB SXM 312 / 2039, H100 SXM 989.4 / 3350, H200 SXM 989.4 / 4800.
      ``vidur_fp16_tflops`` keeps the rounded value Vidur uses for MFU (150, 312, 1000).
    * ``price_per_hour`` ($/GPU-hour): Vidur's defaults, taken from CoreWeave on-demand
      pricing on 2024-02-07 (``vidur/config_optimizer/analyzer/constants.py``):
      H100 4.25, A100 2.21, A40 1.28. CoreWeave listed no H200 then; 5.10 is our
      **estimate** (1.2 x the H100 price, roughly the H200:H100 ratio of 2024 cloud list
      prices). Override prices in the config for real decisions.
    * ``fp8_tflops`` (dense FP8 tensor TFLOP/s, None where the GPU has no FP8 tensor
      cores) and ``link_gbps`` (GPU-to-GPU bandwidth per direction, GB/s): datasheets.
      H100/H200 SXM 1978.9 FP8, NVLink4 900 GB/s bidirectional -> 450; A100 SXM NVLink3
      600 -> 300; A40 NVLink bridge 112.5 -> 56.25; B200 (HGX) 2250 BF16 / 4500 FP8
      dense, 180 GB HBM3e at 8000 GB/s, NVLink5 1800 -> 900; L40S 362.05 BF16 / 733
      FP8 dense, 48 GB GDDR6 at 864 GB/s, no NVLink (PCIe Gen4 x16, 32 GB/s per
      direction); AMD MI300X 1307.4 BF16 / 2614.9 FP8 dense, 192 GB HBM3 at 5300 GB/s,
      Infinity Fabric 896 GB/s aggregate over 7 peers -> 448.
    * Prices of B200, L40S and MI300X are **estimates** of 2025 on-demand cloud list
      prices (B200 1.5 x H100; L40S 0.45 x H100; MI300X 0.6 x H100): set
      ``hardware.price_per_hour`` from a real quote before acting on a cost answer.
    * ``pcie_gbps`` (host PCIe x16 bandwidth per direction, GB/s): PCIe 4.0 32 (A40,
      A100, L40S), PCIe 5.0 64 (H100, H200, B200, MI300X); datasheets.
    * Nodes: Vidur's ``vidur/config/node_sku_config.py``. ``network_device`` names the
      ``profiling/network/<network_device>/`` folder with that node's collective timings.
    * Topology (:data:`TOPOLOGIES`) of a GPU group, which sets the bandwidth of a
      collective (:func:`group_topology`): Vidur's ``*_pairwise_nvlink`` nodes pair their
      GPUs with NVLink bridges and join the pairs over PCIe (a 4-GPU ring crosses PCIe);
      ``*_dgx`` nodes (and HGX H200/B200 boards) connect every GPU to NVSwitches at full
      NVLink bandwidth; an MI300X platform links each of its 8 GPUs directly to the 7
      others (Infinity Fabric mesh: a group of ``p`` GPUs uses ``p - 1`` of the 7 links);
      L40S has no NVLink (PCIe only).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidur_jax.errors import ConfigError


@dataclass(frozen=True)
class DeviceSpec:
    """One GPU SKU.

    Attributes:
        name: short id, e.g. ``"a100"``.
        memory_gb: device memory in GiB (as Vidur's planner uses it).
        fp16_tflops: peak dense FP16 tensor TFLOP/s (datasheet).
        hbm_gbps: peak memory bandwidth, GB/s (datasheet).
        price_per_hour: default cost, $ per GPU-hour.
        vidur_fp16_tflops: the FP16 TFLOP/s figure Vidur uses (for MFU parity), or None.
        fp8_tflops: peak dense FP8 tensor TFLOP/s, or None without FP8 tensor cores.
        link_gbps: GPU-to-GPU interconnect bandwidth per direction, GB/s.
        price_is_estimate: True when ``price_per_hour`` is our estimate, not a quote.
        pcie_gbps: host PCIe bandwidth per direction, GB/s.
        fabric: topology of this GPU's own boards (:data:`TOPOLOGIES`), used when a
            config's network tables are another GPU's stand-in.
        compute_twin: a profiled GPU with the same compute die, SM count and clocks
            (same dense BF16/FP8 peaks), or None; unprofiled ops are then its profiled
            times scaled by the roofline ratio of the two GPUs.
    """

    name: str
    memory_gb: float
    fp16_tflops: float
    hbm_gbps: float
    price_per_hour: float
    vidur_fp16_tflops: float | None = None
    fp8_tflops: float | None = None
    link_gbps: float = 0.0
    price_is_estimate: bool = False
    pcie_gbps: float = 32.0
    fabric: str = "nvswitch"
    compute_twin: str | None = None

    @property
    def memory_bytes(self) -> int:
        """Device memory in bytes (``memory_gb * 1024**3``, Vidur's convention)."""
        return int(self.memory_gb * 1024**3)


@dataclass(frozen=True)
class NodeSpec:
    """One node SKU: which GPU, how many per node, which network profile to use.

    Attributes:
        name: Vidur's node SKU name, e.g. ``"a100_pairwise_nvlink"``.
        device: the GPU SKU name (a key of :data:`DEVICES`).
        devices_per_node: GPUs in one node.
        network_device: folder name under ``profiling/network/`` for collective timings.
        topology: how its GPUs are connected (:data:`TOPOLOGIES`).
    """

    name: str
    device: str
    devices_per_node: int
    network_device: str
    topology: str = "nvswitch"

    @property
    def device_spec(self) -> DeviceSpec:
        """The :class:`DeviceSpec` of this node's GPUs."""
        return get_device(self.device)


DEVICES: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        DeviceSpec(
            "a40",
            45,
            149.7,
            696.0,
            1.28,
            vidur_fp16_tflops=150,
            link_gbps=56.25,
            fabric="pairwise_nvlink",
        ),
        DeviceSpec(
            "a100",
            80,
            312.0,
            2039.0,
            2.21,
            vidur_fp16_tflops=312,
            link_gbps=300.0,
            fabric="pairwise_nvlink",
        ),
        DeviceSpec(
            "h100",
            80,
            989.4,
            3350.0,
            4.25,
            vidur_fp16_tflops=1000,
            fp8_tflops=1978.9,
            link_gbps=450.0,
            pcie_gbps=64.0,
            fabric="pairwise_nvlink",
        ),
        DeviceSpec(
            "h200",
            141,
            989.4,
            4800.0,
            5.10,
            fp8_tflops=1978.9,
            link_gbps=450.0,
            price_is_estimate=True,
            pcie_gbps=64.0,
            compute_twin="h100",
        ),
        DeviceSpec(
            "b200",
            180,
            2250.0,
            8000.0,
            6.38,
            fp8_tflops=4500.0,
            link_gbps=900.0,
            price_is_estimate=True,
            pcie_gbps=64.0,
        ),
        DeviceSpec(
            "l40s",
            48,
            362.05,
            864.0,
            1.91,
            fp8_tflops=733.0,
            link_gbps=32.0,
            price_is_estimate=True,
            fabric="pcie",
        ),
        DeviceSpec(
            "mi300x",
            192,
            1307.4,
            5300.0,
            2.55,
            fp8_tflops=2614.9,
            link_gbps=448.0,
            price_is_estimate=True,
            pcie_gbps=64.0,
            fabric="mesh",
        ),
    )
}

NODES: dict[str, NodeSpec] = {
    n.name: n
    for n in (
        NodeSpec("a100_pairwise_nvlink", "a100", 4, "a100_pairwise_nvlink", "pairwise_nvlink"),
        NodeSpec("h100_pairwise_nvlink", "h100", 4, "h100_pairwise_nvlink", "pairwise_nvlink"),
        NodeSpec("a40_pairwise_nvlink", "a40", 8, "a40_pairwise_nvlink", "pairwise_nvlink"),
        NodeSpec("a100_dgx", "a100", 8, "a100_dgx"),
        NodeSpec("h100_dgx", "h100", 8, "h100_dgx"),
    )
}

_DEVICE_ALIASES = {
    "a100-80gb": "a100",
    "a100_80gb": "a100",
    "h100-sxm": "h100",
    "h200-sxm": "h200",
    "b200-sxm": "b200",
    "mi300": "mi300x",
}


#: GPU-group topologies a collective's bandwidth depends on (see the module docstring).
TOPOLOGIES: tuple[str, ...] = ("nvswitch", "pairwise_nvlink", "mesh", "pcie")


def group_topology(device: str, network_device: str | None = None) -> str:
    """Topology of the GPUs of one replica stage of ``device`` on ``network_device``.

    The node's topology when ``network_device`` is a node of this GPU (``a100_dgx`` ->
    ``nvswitch``, ``h100_pairwise_nvlink`` -> ``pairwise_nvlink``); otherwise (no node
    given, or another GPU's tables standing in, e.g. H200 on ``h100_dgx``) the GPU's own
    boards (:attr:`DeviceSpec.fabric`).
    """
    spec = get_device(device)
    if is_node_of(network_device, spec.name):
        return NODES[str(network_device).strip().lower()].topology
    return spec.fabric


def is_node_of(network_device: str | None, device: str) -> bool:
    """Whether ``network_device`` names a node SKU of ``device``'s GPUs (its own tables)."""
    node = NODES.get(str(network_device).strip().lower()) if network_device else None
    return node is not None and node.device == get_device(device).name


def list_devices() -> list[str]:
    """Names of all known GPU SKUs."""
    return list(DEVICES)


def list_nodes() -> list[str]:
    """Names of all known node SKUs."""
    return list(NODES)


def get_device(name: str) -> DeviceSpec:
    """Look up a GPU SKU by name (case-insensitive).

    Raises:
        ConfigError: for an unknown name; the message lists the allowed names.
    """
    if isinstance(name, DeviceSpec):
        return name
    key = str(name).strip().lower()
    key = _DEVICE_ALIASES.get(key, key)
    if key not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    return DEVICES[key]


def get_node(name: str) -> NodeSpec:
    """Look up a node SKU by name (case-insensitive).

    Raises:
        ConfigError: for an unknown name; the message lists the allowed names.
    """
    if isinstance(name, NodeSpec):
        return name
    key = str(name).strip().lower()
    if key not in NODES:
        raise ConfigError(f"unknown node {name!r}; allowed: {', '.join(NODES)}")
    return NODES[key]
