"""The bytes of one part → the text a person would read in it, and what could not be read.

Data loss prevention is only as good as its worst reader: the CSV nobody scanned, the
spreadsheet inside a ZIP, the PDF. So every part is read the way the software that opens
it would read it, by what the bytes *are* (their magic number) rather than what the
sender says they are: a ``text/plain`` attachment named ``x.xlsx`` opens in Excel.

* **ZIP** (and so DOCX/XLSX/PPTX and ODT/ODS/ODP, which are ZIPs of XML): every member,
  recursively, as a file of its own kind; ``.xml`` members are reduced to their text.
* **PDF**: the text of every page (``pypdf``), and its embedded files.
* **Everything else is read as text**: declared charset, else a byte-order mark, else
  UTF-16 by its zero bytes, else UTF-8; HTML is reduced to what a reader sees. Reading
  images and other binaries as text costs a linear pass and finds nothing; skipping what
  "looks binary" would let one zero byte in front of a CSV hide it.

What cannot be read is reported as ``Unscannable`` with a reason that is safe to log (no
names, no content): an encrypted ZIP member, PDF or Office file (an encrypted OOXML file
is an OLE2 container; legacy ``.doc``/``.xls`` are OLE2 too and are not read), an archive
format we do not open (7z, RAR, gzip, ...), something malformed, or anything over a bound.
Policy decides what that means (``[policy] unscannable``).

**Bounds** (``Limits``), shared by the MIME walk and every archive through one ``Budget``:
nesting depth, parts and members in all, decompressed bytes in all and per member, the
compression ratio of a member (zip bombs), and time, read from the clock passed in between
parts, members and pages. A bound on one member makes that member unscannable; a bound on
the whole (parts, bytes, time) ends the scan, and what is left is unscannable.

XML is read with expat, event by event (no tree), and any document type declaration is
refused, so no entity can be declared, let alone expanded (billion laughs, external
entities); Office and OpenDocument files never have one. A member that is not well-formed
XML is read as plain text instead, which sees the same characters.
"""

from __future__ import annotations

import codecs
import html
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from xml.parsers import expat

import pypdf

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How much work one message may cost the scanner. Over any of them is unscannable."""

    max_depth: int = 100
    """MIME nesting (multiparts, attached messages) and archives, counted together.
    Postfix's ``mime_nesting_limit`` is 100 too; real mail nests a few levels."""
    max_parts: int = 1000
    """MIME parts, archive members and embedded files, in all."""
    max_total_bytes: int = 100 * _MIB
    """Bytes decoded or decompressed, in all."""
    max_member_bytes: int = 25 * _MIB
    """One archive member, embedded file or document handed to a parser."""
    max_ratio: int = 100
    """Decompressed : compressed size of one member, once it is past ``ratio_from``."""
    ratio_from: int = _MIB
    """Small members may compress well (repetitive XML); a bomb must get large."""
    max_seconds: float = 10.0
    """The whole scan, read from the clock between parts, members and pages."""


DEFAULT_LIMITS = Limits()


class Budget:
    """What is left of ``Limits`` for one message; the first bound reached is kept."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._deadline = clock() + limits.max_seconds
        self._parts = 0
        self._bytes = 0
        self.spent = ""
        """Empty while within bounds; else why the scan stopped (safe to log)."""

    def count_part(self) -> bool:
        """Count one part or member; False once the scan must stop."""
        self._parts += 1
        if self._parts > self.limits.max_parts and not self.spent:
            self.spent = f"more than {self.limits.max_parts} parts and archive members"
        return self.within()

    def take(self, size: int) -> bool:
        """Count ``size`` decoded bytes; False once the scan must stop."""
        self._bytes += size
        if self._bytes > self.limits.max_total_bytes and not self.spent:
            self.spent = f"more than {_size(self.limits.max_total_bytes)} decoded in all"
        return self.within()

    def within(self) -> bool:
        """True while no bound of the whole scan, time included, has been reached."""
        if not self.spent and self._clock() > self._deadline:
            self.spent = f"scan took longer than {self.limits.max_seconds:g} s"
        return not self.spent

    def too_deep(self, depth: int) -> str:
        """Why something at ``depth`` is not opened, or "" if it may be."""
        if depth > self.limits.max_depth:
            return f"nested deeper than {self.limits.max_depth} levels"
        return ""


@dataclass(frozen=True, slots=True)
class Text:
    """Text a person would read, and where it was (a label safe to log)."""

    where: str
    text: str


@dataclass(frozen=True, slots=True)
class Unscannable:
    """Something a person could read that the scanner could not, and why."""

    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class Embedded:
    """An e-mail message (``.eml``) found inside an archive, for the MIME walker to read."""

    where: str
    raw: bytes
    depth: int


Item = Text | Unscannable | Embedded

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# The directory entry name, in UTF-16, of the stream an encrypted OOXML file is kept in.
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_PDF = b"%PDF-"
_PDF_HEADER_WITHIN = 1024  # ISO 32000: readers find the header anywhere in the first KiB
_ARCHIVES = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "RAR"),
    (b"(\xb5/\xfd", "zstd"),
    (b"MSCF\x00\x00\x00\x00", "cabinet"),
)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM it starts with
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF_BYTES = 4096
_READ_CHUNK = 64 * 1024


def extract(
    data: bytes,
    where: str,
    *,
    depth: int,
    budget: Budget,
    content_type: str = "application/octet-stream",
    charset: str | None = None,
    filename: str = "",
) -> list[Item]:
    """Everything a person could read in one part or member; never raises.

    ``content_type`` and ``filename`` are what the sender declared. A ``text/*`` part
    without a file name is shown inline by mail clients, so it is read as text whatever
    its bytes; anything else is read by what its bytes are.
    """
    out: list[Item] = []
    try:
        _file(data, where, depth, budget, out, content_type, charset, filename.lower())
    except Exception:  # a parser bug must not let a part through unread
        out.append(Unscannable(where, "could not be read (scanner error)"))
    return out


def _file(
    data: bytes,
    where: str,
    depth: int,
    budget: Budget,
    out: list[Item],
    content_type: str,
    charset: str | None,
    name: str,
) -> None:
    inline_text = content_type.startswith("text/") and not name
    html_like = content_type == "text/html" or name.endswith((".htm", ".html"))
    if not inline_text:
        if data.startswith(_ZIP):
            _container(data, where, depth, budget, out, _zip)
            return
        if _PDF in data[:_PDF_HEADER_WITHIN]:
            _container(data, where, depth, budget, out, _pdf)
            return
        if data.startswith(_OLE2):
            encrypted = _ENCRYPTED_PACKAGE in data
            kind = "encrypted Office document" if encrypted else "legacy Office (OLE2) file"
            out.append(Unscannable(where, kind if encrypted else f"{kind}, not read"))
            return
        if archive := _archive_format(data):
            out.append(Unscannable(where, f"{archive} archive, not opened"))
            return
        if name.endswith(".eml"):  # a MIME message/rfc822 part never gets here: the walker reads it
            out.append(Embedded(where, data, depth))
            return
    text = decode_text(data, charset)
    out.append(Text(where, html_text(text) if html_like else text))


def _container(
    data: bytes,
    where: str,
    depth: int,
    budget: Budget,
    out: list[Item],
    reader: Callable[[bytes, str, int, Budget, list[Item]], None],
) -> None:
    if reason := budget.too_deep(depth + 1):
        out.append(Unscannable(where, reason))
    elif len(data) > budget.limits.max_member_bytes:
        out.append(Unscannable(where, f"larger than {_size(budget.limits.max_member_bytes)}"))
    else:
        reader(data, where, depth + 1, budget, out)


def _archive_format(data: bytes) -> str:
    for magic, name in _ARCHIVES:
        if data.startswith(magic):
            return name
    return "tar" if data[257:262] == b"ustar" else ""


# --- ZIP, and so Office Open XML and OpenDocument -------------------------------------


def _zip(data: bytes, where: str, depth: int, budget: Budget, out: list[Item]) -> None:
    """Each member of a ZIP at ``depth``, in order, as a file of its own kind."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
    except Exception:
        out.append(Unscannable(where, "malformed ZIP"))
        return
    if _odf_encrypted(archive, budget):
        out.append(Unscannable(where, "encrypted OpenDocument file"))
        return
    for index, info in enumerate(members, 1):
        member = f"{where}, member {index}"
        if not budget.count_part():
            return  # the walker reports the spent budget once, for the rest of the message
        if info.flag_bits & 0x1:
            out.append(Unscannable(member, "encrypted ZIP member"))
            continue
        content = _read_member(archive, info, budget)
        if isinstance(content, str):
            if budget.spent:
                return
            out.append(Unscannable(member, content))
            continue
        name = info.filename.lower()
        if name.endswith((".xml", ".rels")):
            text = xml_text(content)
            if text is not None:
                out.append(Text(member, text))
                continue
        _file(content, member, depth, budget, out, "application/octet-stream", None, name)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> bytes | str:
    """The member's bytes, or why not: read in chunks, so a bomb stops at its first bound.

    The sizes in the archive are the sender's claims and are checked again as the bytes
    come: a member claiming to be small stops as soon as it is not.
    """
    limits = budget.limits
    compressed = max(info.compress_size, 1)

    def over(size: int) -> str:
        if size > limits.max_member_bytes:
            return f"larger than {_size(limits.max_member_bytes)}"
        if size > limits.ratio_from and size > limits.max_ratio * compressed:
            return f"compression ratio over {limits.max_ratio}:1"
        return ""

    if reason := over(info.file_size):
        return reason
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(_READ_CHUNK):
                size += len(chunk)
                if reason := over(size):
                    return reason
                if not budget.take(len(chunk)):
                    return budget.spent
                chunks.append(chunk)
    except NotImplementedError:
        return "ZIP member compressed with a method we do not read"
    except Exception:
        return "malformed ZIP member"
    return b"".join(chunks)


def _odf_encrypted(archive: zipfile.ZipFile, budget: Budget) -> bool:
    """OpenDocument encrypts members itself (not with the ZIP flag) and lists them here."""
    try:
        info = archive.getinfo("META-INF/manifest.xml")
    except KeyError:
        return False
    content = _read_member(archive, info, budget)  # unreadable: reported as a member
    return not isinstance(content, str) and b"encryption-data" in content


# Elements that end a paragraph, cell or value in WordprocessingML, SpreadsheetML,
# DrawingML (PowerPoint) and OpenDocument: text on either side must not run together
# (two spreadsheet cells "12" and "9434765919" are not the number 129434765919).
_BLOCKS = frozenset(
    {"p", "h", "tc", "tr", "td", "th", "c", "v", "f", "si", "is", "row", "table-cell",
     "table-row", "list-item", "txbxContent", "footnote", "endnote", "comment"}
)  # fmt: skip
_BREAKS = {"br": "\n", "cr": "\n", "line-break": "\n", "tab": "\t", "s": " "}
# Elements that hold a run of text *within* a paragraph: Word splits one typed number
# over several runs whenever formatting or an edit session changes, so these join.
_INLINE = frozenset({"t", "delText", "span", "a"})


class _XmlText:
    """expat handlers that keep the character data a reader sees, in document order."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.open: list[tuple[str, bool]] = []  # (local name, has text of its own)

    def start(self, name: str, _attrs: object) -> None:
        local = name.rpartition(":")[2]
        self.open.append((local, False))
        if sep := _BREAKS.get(local):
            self.out.append(sep)

    def end(self, _name: str) -> None:
        local, has_text = self.open.pop()
        # Any other element that held text of its own (a document property, a value)
        # ends a piece too, so neighbouring values never merge into one number.
        if local in _BLOCKS or (has_text and local not in _INLINE):
            self.out.append("\n")

    def data(self, text: str) -> None:
        if not self.open:
            return
        local, has_text = self.open[-1]
        if text.strip():
            if not has_text:
                self.open[-1] = (local, True)
        elif local not in _INLINE:
            return  # indentation between elements, not text
        self.out.append(text)


def _refuse_doctype(*_args: object) -> None:
    raise ValueError("document type declarations are not read")


def xml_text(data: bytes) -> str | None:
    """The character data of an XML document, paragraphs on their own lines.

    None when ``data`` is not well-formed XML without a document type declaration.
    """
    handler = _XmlText()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.StartElementHandler = handler.start
    parser.EndElementHandler = handler.end
    parser.CharacterDataHandler = handler.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, ValueError):
        return None
    return "".join(handler.out)


# --- PDF ------------------------------------------------------------------------------


def _pdf(data: bytes, where: str, depth: int, budget: Budget, out: list[Item]) -> None:
    """The text of each page, then each embedded file (at ``depth``), via pypdf.

    pypdf's own bounds are narrowed to ours for the duration (a context variable, so
    other threads are untouched), and it may never run an external decoder.
    """
    found: list[Item] = []
    attachments: list[tuple[str, bytes]] = []
    cap = budget.limits.max_member_bytes
    try:
        with pypdf.apply_configuration(
            maximum_declared_stream_length=cap,
            array_based_stream_maximum_output_length=cap,
            jbig2_maximum_output_length=cap,
            lzw_maximum_output_length=cap,
            run_length_maximum_output_length=cap,
            zlib_maximum_output_length=cap,
            brotli_maximum_output_length=cap,
            image_maximum_buffer_size=cap,
            stream_decoding_work_maximum_length=cap * 4,
            jbig2dec_binary=None,
        ):
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not _opens_without_password(reader):
                out.append(Unscannable(where, "encrypted PDF"))
                return
            for page in reader.pages:
                if not budget.within():
                    break
                text = page.extract_text()
                found.append(Text(where, text))
                if not budget.take(len(text)):
                    break
            else:
                attachments = [
                    (name, content)
                    for name, contents in reader.attachments.items()
                    for content in contents
                ]
    except Exception:
        found.append(Unscannable(where, "malformed PDF"))
    out.extend(found)
    for index, (name, content) in enumerate(attachments, 1):
        embedded = f"{where}, embedded file {index}"
        if not budget.count_part():
            return
        if len(content) > cap:
            out.append(Unscannable(embedded, f"larger than {_size(cap)}"))
            continue
        _file(content, embedded, depth, budget, out, "application/octet-stream", None, name.lower())


def _opens_without_password(reader: pypdf.PdfReader) -> bool:
    """A PDF with only an owner password opens for anyone, so it is read like any other."""
    try:
        return bool(reader.decrypt(""))
    except Exception:
        return False


# --- text -------------------------------------------------------------------------------


def decode_text(data: bytes, charset: str | None) -> str:
    """``data`` as text: a byte-order mark first, then the declared charset, then UTF-16
    recognised by its zero bytes (Excel's "Unicode text"), then UTF-8. Never raises."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    if not charset:
        charset = _utf16_without_bom(data[:_SNIFF_BYTES])
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


def _utf16_without_bom(sample: bytes) -> str | None:
    """UTF-16 text in a Latin script has a zero in every other byte; nothing else does."""
    pairs = len(sample) // 2
    if pairs < 4:
        return None
    even = sample[0 : pairs * 2 : 2].count(0)
    odd = sample[1 : pairs * 2 : 2].count(0)
    if odd * 10 >= pairs * 9 and even * 10 <= pairs:
        return "utf-16-le"
    if even * 10 >= pairs * 9 and odd * 10 <= pairs:
        return "utf-16-be"
    return None


_HTML_SPACE = re.compile(r"[ \t\r\n\f]+")
# Every tag pattern stops at the next "<", so no match can rescan text: linear time.
_HIDDEN_START = re.compile(r"<!--|<(script|style)\b[^<>]*>", re.IGNORECASE)
_HIDDEN_END = re.compile(r"</(?:script|style)\b[^<>]*>", re.IGNORECASE)
_COMMENT_END = re.compile(r"-->")
_ANY_TAG = re.compile(r"</?[a-z][^<>]*>|<[!?][^<>]*>", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    r"</?(?:p|br|div|tr|td|th|li|ul|ol|table|hr|pre|blockquote|h[1-6]|section|article"
    r"|header|footer)\b[^<>]*>",
    re.IGNORECASE,
)


def html_text(markup: str) -> str:
    """Reduce HTML to the text a reader sees, one line per block, so tags cannot split it.

    Regexes rather than ``html.parser``: that is quadratic on some malformed markup in
    the Python versions we support (three megabytes of ``<a `` take minutes), and a
    scanner a sender can stall is a scanner that gets switched off.
    """
    visible = []
    pos = 0
    while (start := _HIDDEN_START.search(markup, pos)) is not None:
        end = (_COMMENT_END if start[1] is None else _HIDDEN_END).search(markup, start.end())
        if end is None:
            break
        visible.append(markup[pos : start.start()])
        pos = end.end()
    visible.append(markup[pos:])
    text = _HTML_SPACE.sub(" ", " ".join(visible))
    return html.unescape(_ANY_TAG.sub("", _BLOCK_TAG.sub("\n", text)))


def _size(count: int) -> str:
    return f"{count // _MIB} MiB" if count >= _MIB else f"{count} bytes"
