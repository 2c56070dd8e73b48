#!/usr/bin/env python3
"""Prints the functions of one object file that ran in callgrind profiles (run with
--demangle=no), one mangled name per line: those of the first profile first, then those
that only the others add, each group sorted. Used by
scripts/orderfile.sh to build the linker's symbol ordering file."""
import argparse
import re

COMPRESSED = re.compile(r"\((\d+)\)(?: (.*))?$")
RECURSION = re.compile(r"'\d+$")  # callgrind marks recursion depth as name'2


def functions(path, obj):
    objects, names = {}, {}

    def resolve(table, text):
        m = COMPRESSED.match(text)
        if not m:
            return text
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))

    current_object = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                current_object = resolve(objects, line[3:])
            elif line.startswith("cob="):
                resolve(objects, line[4:])
            elif line.startswith("fn="):
                name = resolve(names, line[3:])
                if name and current_object == obj:
                    yield RECURSION.sub("", name)
            elif line.startswith("cfn="):
                resolve(names, line[4:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--object", required=True, help="path of the binary profiled")
    parser.add_argument("profiles", nargs="+")
    args = parser.parse_args()
    seen = set()
    first, rest = args.profiles[0], args.profiles[1:]
    for group in ([first], rest):
        ran = set()
        for profile in group:
            ran.update(functions(profile, args.object))
        # Sorted within a group: the layout only needs them together, and a sorted list
        # keeps the diff of a regenerated file to the functions that changed.
        new = sorted(ran - seen)
        seen.update(new)
        for name in new:
            print(name)


if __name__ == "__main__":
    main()
