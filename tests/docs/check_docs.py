#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Keeps the documents true to the code: every relative link in a tracked
# Markdown file resolves inside the repository, and every stk_/STK_ name
# that a document or a comment in the C and CUDA sources mentions exists
# in the code (a renamed call leaves no stale mention behind).
# Usage: check_docs.py SOURCE_ROOT. Exit 0, or 1 listing each problem.
import os
import re
import subprocess
import sys

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else '.')


def tracked(*patterns):
    try:
        out = subprocess.run(['git', '-C', root, 'ls-files', '--cached', '--others',
                              '--exclude-standard', '--', *patterns],
                             capture_output=True, text=True, check=True).stdout
        files = out.split()
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # not a git checkout (a release tarball): walk instead
        exts = tuple(p.lstrip('*') for p in patterns)
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if not x.startswith(('.', 'build'))]
            files += [os.path.relpath(os.path.join(d, n), root) for n in names if n.endswith(exts)]
    return sorted(f for f in files if os.path.isfile(os.path.join(root, f)))


def comments(text):
    """The text of C comments, line structure kept."""
    out = []
    for m in re.finditer(r'/\*.*?\*/|//[^\n]*', text, re.S):
        out.append(m.group(0))
    return '\n'.join(out)


problems = []
md_files = tracked('*.md')
code_files = tracked('*.c', '*.h', '*.cu', '*.cuh', '*.in', '*.py', '*.build', '*.sh', '*.txt')

# Every identifier the code defines or uses, from code text (comments too:
# a macro named only in a comment does not count, so strip them first).
known = set()
ident = re.compile(r'\b(?:stk|STK)_[A-Za-z0-9_]*[A-Za-z0-9]')
for f in code_files:
    with open(os.path.join(root, f), encoding='utf-8', errors='replace') as fh:
        text = fh.read()
    if f.endswith(('.c', '.h', '.cu', '.cuh', '.in')):
        text = re.sub(r'/\*.*?\*/|//[^\n]*', ' ', text, flags=re.S)
    known.update(ident.findall(text))


def check_names(path, text):
    for m in ident.finditer(text):
        name = m.group(0)
        # a prefix (STK_E…, stk_x_*) names a family, not one identifier
        # and a lone x stands for any module (stk_x_create, STK_HAVE_X)
        if name in known or text[m.end():m.end() + 1] in ('…', '*', '_', '<') \
                or re.search(r'_[xX](_|$)', name):
            continue
        problems.append(f'{path}: mentions {name}, which no header or source defines')


for f in tracked('*.c', '*.h', '*.cu', '*.cuh'):
    with open(os.path.join(root, f), encoding='utf-8', errors='replace') as fh:
        check_names(f, comments(fh.read()))

link = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
for f in md_files:
    with open(os.path.join(root, f), encoding='utf-8') as fh:
        text = fh.read()
    check_names(f, text)
    for target in link.findall(text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        rel = target.split('#', 1)[0]
        full = os.path.normpath(os.path.join(root, os.path.dirname(f), rel))
        if not (full == root or full.startswith(root + os.sep)):
            problems.append(f'{f}: link {target} leaves the repository')
        elif not os.path.exists(full):
            problems.append(f'{f}: link {target} points at nothing')

for p in sorted(set(problems)):
    print(p)
if problems:
    print(f'{len(set(problems))} problem(s)', file=sys.stderr)
    sys.exit(1)
print(f'{len(md_files)} documents and the sources\' comments: links resolve, names exist')
