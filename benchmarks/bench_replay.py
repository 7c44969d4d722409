"""Replay memory bytes per transition: reinforge's frame-deduplicated buffer vs a naive buffer
that stores obs and next_obs stacks (4x84x84 uint8 each), measured on real Pong frames."""

from __future__ import annotations

import numpy as np

from _common import Timer, parse_args, print_table, write_results


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from rl.envs import EnvConfig, make_vector_env
    from rl.replay import ReplayMemory, atari_bytes_per_transition

    n = 2_000 if args.quick else 20_000
    env = make_vector_env(EnvConfig(id="ALE/Pong-v5"), 4, seed=0)
    obs = env.reset()
    rows = []
    for prioritized in (False, True):
        mem = ReplayMemory(n, 4, (84, 84), 4, np.uint8, n_step=3, gamma=0.99, prioritized=prioritized)
        rng = np.random.default_rng(0)
        first = np.ones(4, bool)
        for _ in range(n // 4):
            a = rng.integers(0, 6, 4)
            nxt, r, term, trunc, info = env.step(a)
            seg = {"obs": obs[None], "first": first[None], "actions": a[None], "rewards": r[None],
                   "terminated": term[None], "truncated": trunc[None]}
            mem.add_segment(range(4), seg)
            obs, first = nxt, info["reset_mask"]
        with Timer() as t:
            for _ in range(50):
                mem.sample(32)
        per = mem.bytes_per_transition()
        rows.append({"buffer": f"reinforge ({'prioritized' if prioritized else 'uniform'})",
                     "bytes_per_transition": per, "GB_per_1M": per * 1e6 / 1e9,
                     "sample_ms_batch32": t.seconds / 50 * 1e3})
    naive = 2 * 4 * 84 * 84 + 8 + 4 + 1
    rows.append({"buffer": "naive (obs + next_obs stacks)", "bytes_per_transition": float(naive),
                 "GB_per_1M": naive * 1e6 / 1e9})
    rows.append({"buffer": "reinforge formula (prioritized)", "bytes_per_transition": atari_bytes_per_transition(),
                 "GB_per_1M": atari_bytes_per_transition() * 1e6 / 1e9})
    env.close()
    print_table(rows, ["buffer", "bytes_per_transition", "GB_per_1M", "sample_ms_batch32"],
                title="Replay memory per Atari transition")
    print(f"wrote {write_results('replay', rows, args.out, transitions=n)}")


if __name__ == "__main__":
    main()
