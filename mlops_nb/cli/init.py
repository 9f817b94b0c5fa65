"""`mlops-nb init DIR --csv FILE --target COLUMN`: a new project from a CSV file (``mlops_nb.scaffold``)."""
from __future__ import annotations


def cmd_init(args) -> int:
    from ..scaffold import create

    made = create(args.dir, args.csv, args.target, time=args.time, positive=args.positive)
    inferred, spec = made.inferred, made.inferred.spec
    print(f"created {made.folder} from {args.csv} ({inferred.rows} rows)")
    print(f"  target {spec['target']!r}: P({spec['target']} = {spec['positive']!r}); classes "
          + ", ".join(f"{k!r} {v}" for k, v in inferred.classes.items()))
    print(f"  split: {'by time (' + repr(spec['time']) + ')' if spec['time'] else 'random, seeded'}")
    print(f"  {len(spec['fields'])} input field(s):")
    for name, f in spec["fields"].items():
        print(f"    {name}: {f['kind']}, {inferred.columns[name]}")
    for column, why in inferred.ignored.items():
        print(f"  left out {column!r}: {why}")
    for note in inferred.notes:
        print(f"  note: {note}")
    print(f"Edit {made.folder / 'record.yaml'} if needed, then: cd {made.folder} && make run && mlops-nb serve")
    return 0
