#!/usr/bin/env python3
"""Prints the functions of one object file that ran in callgrind profiles (run with
--demangle=no), one mangled name per line: those of the first profile first, then those
that only later profiles add, each in the order callgrind wrote them. Used by
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
    for profile in args.profiles:
        for name in functions(profile, args.object):
            if name not in seen:
                seen.add(name)
                print(name)


if __name__ == "__main__":
    main()
