#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0
"""Render Documentation/*.rst to HTML with Debian's docutils.

The files are written for the kernel's Sphinx build: they use its
``toctree`` directive and ``:doc:`` role, which plain docutils lacks.  Both
are given here with what Sphinx checks of them (every entry or target is a
document of the same directory) and a plain rendering (a list of links, a
link).  Any docutils message of level WARNING or above is a finding: they
are printed and the exit status is 1.

usage: docs.py SRC_DIR OUT_DIR
"""

import io
import os
import sys

from docutils import nodes, utils
from docutils.core import publish_file
from docutils.parsers.rst import Directive, directives, roles

SRC = None


def doc_exists(name):
    return os.path.isfile(os.path.join(SRC, name + ".rst"))


def doc_link(name, text):
    return nodes.reference(text, text, refuri=name + ".html")


class TocTree(Directive):
    """Sphinx's toctree: a list of the documents named, each must exist."""

    has_content = True
    option_spec = {"maxdepth": directives.nonnegative_int,
                   "caption": directives.unchanged,
                   "numbered": directives.flag,
                   "hidden": directives.flag}

    def run(self):
        out = nodes.bullet_list()
        msgs = []
        for entry in self.content:
            name = entry.strip()
            if not name:
                continue
            if not doc_exists(name):
                msgs.append(self.state_machine.reporter.warning(
                    "toctree names a document that does not exist: %s"
                    % name, line=self.lineno))
                continue
            para = nodes.paragraph()
            para += doc_link(name, name)
            item = nodes.list_item()
            item += para
            out += item
        return [out] + msgs


def doc_role(name, rawtext, text, lineno, inliner, options=None,
             content=None):
    """Sphinx's :doc:`target` and :doc:`title <target>`."""
    text = utils.unescape(text)
    title, target = text, text
    if text.endswith(">") and "<" in text:
        title, target = text[:-1].split("<", 1)
        title = title.strip()
    if not doc_exists(target):
        msg = inliner.reporter.warning(
            ":doc: names a document that does not exist: %s" % target,
            line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    return [doc_link(target, title)], []


def main():
    global SRC

    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    SRC, out = sys.argv[1], sys.argv[2]
    directives.register_directive("toctree", TocTree)
    roles.register_local_role("doc", doc_role)
    os.makedirs(out, exist_ok=True)

    findings = 0
    for name in sorted(os.listdir(SRC)):
        if not name.endswith(".rst"):
            continue
        report = io.StringIO()
        publish_file(source_path=os.path.join(SRC, name),
                     destination_path=os.path.join(out, name[:-4] + ".html"),
                     writer_name="html5",
                     settings_overrides={"report_level": 2,
                                         "halt_level": 5,
                                         "warning_stream": report,
                                         "input_encoding": "utf-8",
                                         "output_encoding": "utf-8",
                                         "embed_stylesheet": False})
        text = report.getvalue()
        if text:
            findings += text.count("\n") or 1
            sys.stdout.write(text)
    print("docs: %s: %s" % (out, "%d finding(s)" % findings if findings
                            else "rendered without warnings"))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
