"""Draws bench/compare.png from bench/compare-results.json (written by
`cargo bench --bench compare`): TCP connection rate and UDP request rate
to a service, and TCP connection rate to an address no rule translates,
relative to direct, and programming time (balctl's: load + sync, and sync
alone), against the number of services.

Usage: python3 bench/plot.py [RESULTS.json [CHART.png]]   (needs matplotlib)
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

BENCH = Path(__file__).resolve().parent
STYLE = {
    "direct": {"color": "#555555", "marker": "s", "linestyle": "--"},
    "balctl": {"color": "#1b9e77", "marker": "o", "linewidth": 2.5},
    "iptables-legacy": {"color": "#d95f02", "marker": "^"},
    "iptables-nft": {"color": "#e7298a", "marker": "D"},
    "nftables": {"color": "#7570b3", "marker": "v"},
}


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "compare-results.json"
    chart = Path(sys.argv[2]) if len(sys.argv) > 2 else BENCH / "compare.png"
    results = json.loads(source.read_text())
    sizes = results["sizes"]

    figure, axes = plt.subplots(1, 4, figsize=(22, 5.2))
    for axis, protocol, title in [
        (axes[0], "tcp", "TCP connection rate"),
        (axes[1], "udp", "UDP request/response rate"),
        (axes[2], "bystander", "Other traffic: TCP to a non-service address"),
    ]:
        for name, style in STYLE.items():
            points = [
                (s["services"], s["datapath"][name][protocol])
                for s in sizes
                if protocol in s["datapath"].get(name, {})
            ]
            if not points:
                continue
            axis.plot(
                [p[0] for p in points],
                [p[1]["vs_direct"] for p in points],
                label=name,
                **style,
            )
            # The absolute rate at the line's last point; the rest are in
            # bench/RESULTS.md.
            services, measured = points[-1]
            axis.annotate(
                f"{measured['rate_per_s']:,.0f}/s",
                (services, measured["vs_direct"]),
                textcoords="offset points",
                xytext=(6, 3 if name == "direct" else -9),
                fontsize=7,
                color=style["color"],
            )
        axis.set_title(f"{title}, relative to direct")
        axis.set_ylabel("rate / direct rate (median of rounds)")
        axis.set_ylim(0, 1.1)
        if protocol == "bystander":
            continue
        axis.axhline(0.97, color="#1b9e77", linewidth=0.8, linestyle=":")
        axis.text(
            0.01, 0.955, "balctl target 0.97", transform=axis.get_yaxis_transform(),
            fontsize=7, color="#1b9e77", va="top",
        )

    programming = axes[3]
    commands = {
        "balctl": "balctl load + sync",
        "iptables-legacy": "iptables-legacy-restore",
        "iptables-nft": "iptables-nft-restore",
        "nftables": "nft -f",
    }
    stopped = []
    for name, label in commands.items():
        points = [(s["services"], s["programming"][name]) for s in sizes]
        style = STYLE[name]
        programming.plot(
            [p[0] for p in points],
            [p[1]["seconds"] for p in points],
            label=label,
            **style,
        )
        # A run stopped at the time limit took longer: an open marker.
        for services, run in points:
            if not run["finished"]:
                programming.plot(
                    [services], [run["seconds"]], marker=style["marker"], markersize=11,
                    markerfacecolor="white", color=style["color"], linestyle="none",
                )
                stopped.append(f"{label} at {services:,}")
    # balctl's sync alone (its time without load), where the run says.
    syncs = [
        (s["services"], s["programming"]["balctl"]["parts"]["sync"])
        for s in sizes
        if "sync" in s["programming"].get("balctl", {}).get("parts", {})
    ]
    if syncs:
        programming.plot(
            [p[0] for p in syncs], [p[1] for p in syncs], label="balctl sync alone",
            color=STYLE["balctl"]["color"], marker="o", markersize=4, linestyle=":",
        )
    if stopped:
        programming.text(
            0.98, 0.02, "open: stopped at the time limit\n(" + "; ".join(stopped) + ")",
            transform=programming.transAxes, fontsize=7, ha="right", va="bottom",
        )
    programming.set_title("Time to program the services")
    programming.set_ylabel("seconds (whole process)")
    programming.set_yscale("log")

    services = [s["services"] for s in sizes]
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xticks(services, [f"{n:,}" for n in services])
        axis.set_xlim(min(services) / 1.6, max(services) * 3)
        axis.minorticks_off()
        axis.set_xlabel("services")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8, loc="lower left" if axis is not programming else "upper left")
    machine = results["machine"]
    figure.suptitle(
        f"balctl vs kube-proxy (iptables, nftables) vs direct, pods behind nodes - {machine['cpus']} CPUs, "
        f"kernel {machine['kernel']}, {machine['date']}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(chart, dpi=110)


if __name__ == "__main__":
    main()
