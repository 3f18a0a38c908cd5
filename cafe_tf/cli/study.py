"""Run a preregistered study in resumable cells, and read its status and claims.

  python -m cafe_tf.study run benchmarks/studies/cafenet_pilot                 # every cell not done
  python -m cafe_tf.study run DIR --cells 'supernet_*' --max_minutes 120        # some cells, a time box
  python -m cafe_tf.study status DIR [--json]      # planned / done / CPU time per cell kind
  python -m cafe_tf.study summary DIR [--json]     # every claim: estimate, 95% interval, n, decision

``run`` runs the planned cells that are not done, in dependency order, each from a git worktree of
the manifest's commit (under $CAFE_TF_WORKTREES, default /tmp/cafe_tf_worktrees) in its own process,
and commits each cell's files as it finishes (``--no_commit`` leaves them uncommitted). It is safe
to kill at any moment: a killed cell leaves no record and runs again; run the same command to
resume. ``--max_minutes`` starts no cell after that many minutes. The manifest must be committed and
unchanged since its first cell; ``status`` and ``summary`` refuse records of mixed manifests.

Exit codes: 0 done (or nothing left to run), 1 a cell failed (its output is in the log), 2 usage
error or a study the runner refuses.
"""

from __future__ import annotations

import argparse
import json
import sys


def parser() -> argparse.ArgumentParser:
    """The program's argument parser (subcommands run, status, summary, and the internal _cell)."""
    p = argparse.ArgumentParser(prog="python -m cafe_tf.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,status,summary}")
    run = sub.add_parser("run", help="run the planned cells that are not done, resuming")
    run.add_argument("dir", help="the study folder (holding manifest.json)")
    run.add_argument("--cells", default=None, help="fnmatch pattern of cell ids to run (default: all)")
    run.add_argument("--max_minutes", type=float, default=None, help="start no cell after this many minutes")
    run.add_argument("--no_commit", action="store_true", help="leave the cells' files uncommitted")
    for name, text in (("status", "planned, done and CPU time per cell kind"),
                       ("summary", "every claim with estimate, 95%% interval, n and decision")):
        s = sub.add_parser(name, help=text)
        s.add_argument("dir", help="the study folder (holding manifest.json)")
        s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cell = sub.add_parser("_cell")  # internal: one cell, in the pinned worktree's process
    cell.add_argument("dir")
    cell.add_argument("cell_id")
    cell.add_argument("--manifest_sha256", default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    """Parses ``argv`` (default: ``sys.argv[1:]``), runs the subcommand, exits with its code."""
    from cafe_tf.io import ArtifactError
    from cafe_tf.study import claims, ledger, runner
    from cafe_tf.study.manifest import StudyError

    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            out = runner.run(args.dir, cells=args.cells, max_minutes=args.max_minutes, commit=not args.no_commit,
                             log=lambda line: print(line, flush=True))
            print(f"ran {len(out['ran'])} cells; {out['left']} planned cells not done", flush=True)
            sys.exit(1 if out["failed"] else 0)
        if args.command == "_cell":
            runner.run_cell(args.dir, args.cell_id, args.manifest_sha256)
            sys.exit(0)
        s = ledger.status(args.dir) if args.command == "status" else claims.summary(args.dir)
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            sys.stdout.write(ledger.render_status(s) if args.command == "status" else claims.render(s))
    except (StudyError, ArtifactError, ValueError) as e:
        sys.stderr.write(f"study: error: {e}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
