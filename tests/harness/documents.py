"""Documents built in the test, never binary fixtures: ZIP, Office, OpenDocument, PDF, mail.

Each builder makes the smallest file the real format allows that still holds its text
where the real application keeps it (Word's runs, Excel's cells, PowerPoint's shapes,
OpenDocument's content.xml, a PDF page's compressed content stream), so the scanner is
tested on structure, not on a byte string that happens to contain digits.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from email import policy
from email.message import EmailMessage
from xml.sax.saxutils import escape

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

CSV = b"name,nhs_number\r\nJane,9434765919\r\n"

W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
S = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
A = (
    'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
    'xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main"'
)
ODF_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"'
)
XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


def zip_of(members: dict[str, bytes], *, stored: bool = False) -> bytes:
    out = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _content_types(part: str, main: str) -> bytes:
    return (
        f'{XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        f'<Override PartName="/{part}" ContentType="{main}"/></Types>'
    ).encode()


def docx(*runs: str) -> bytes:
    """One Word paragraph whose text is split over ``runs`` (Word does this on its own)."""
    body = "".join(
        f'<w:r><w:rPr><w:b/></w:rPr><w:t xml:space="preserve">{escape(r)}</w:t></w:r>' for r in runs
    )
    document = f"{XML}<w:document {W}><w:body><w:p>{body}</w:p></w:body></w:document>"
    return zip_of(
        {
            "[Content_Types].xml": _content_types(
                "word/document.xml",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
            ),
            "word/document.xml": document.encode(),
        }
    )


def xlsx(*rows: tuple[str | int, ...]) -> bytes:
    """A sheet of cells: numbers stored as numbers (``<v>``), text as inline strings."""

    def cell(value: str | int) -> str:
        if isinstance(value, int):
            return f"<c><v>{value}</v></c>"
        return f'<c t="inlineStr"><is><t>{escape(value)}</t></is></c>'

    sheet = "".join(f"<row>{''.join(cell(v) for v in row)}</row>" for row in rows)
    return zip_of(
        {
            "[Content_Types].xml": _content_types(
                "xl/worksheets/sheet1.xml",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml",
            ),
            "xl/worksheets/sheet1.xml": (
                f"{XML}<worksheet {S}><sheetData>{sheet}</sheetData></worksheet>"
            ).encode(),
        }
    )


def pptx(text: str) -> bytes:
    slide = (
        f"{XML}<p:sld {A}><p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>{escape(text)}"
        "</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>"
    )
    return zip_of(
        {
            "[Content_Types].xml": _content_types(
                "ppt/slides/slide1.xml",
                "application/vnd.openxmlformats-officedocument.presentationml.slide+xml",
            ),
            "ppt/slides/slide1.xml": slide.encode(),
        }
    )


def odf(kind: str, text: str, *, encrypted: bool = False) -> bytes:
    """An OpenDocument file (``kind``: text, spreadsheet or presentation) holding ``text``."""
    inner = {
        "text": f"<office:text><text:p>{escape(text)}</text:p></office:text>",
        "spreadsheet": (
            "<office:spreadsheet><table:table><table:table-row><table:table-cell>"
            f"<text:p>{escape(text)}</text:p></table:table-cell></table:table-row></table:table>"
            "</office:spreadsheet>"
        ),
        "presentation": (
            "<office:presentation><draw:page><draw:frame><draw:text-box>"
            f"<text:p>{escape(text)}</text:p></draw:text-box></draw:frame></draw:page>"
            "</office:presentation>"
        ),
    }[kind]
    content = f"{XML}<office:document-content {ODF_NS}><office:body>{inner}</office:body>"
    content += "</office:document-content>"
    manifest = (
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml">'
        + ('<manifest:encryption-data manifest:checksum="x"/>' if encrypted else "")
        + "</manifest:file-entry></manifest:manifest>"
    )
    body = zlib.compress(content.encode())[2:-4] if encrypted else content.encode()
    return zip_of(
        {
            "mimetype": f"application/vnd.oasis.opendocument.{kind}".encode(),
            "content.xml": body,
            "META-INF/manifest.xml": manifest.encode(),
        }
    )


def pdf(
    text: str,
    *,
    user_password: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    """One page showing ``text`` in Helvetica, its content stream Flate-compressed."""
    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    stream = DecodedStreamObject()
    literal = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({literal}) Tj ET".encode("latin-1"))
    page.replace_contents(stream)
    page.compress_content_streams()
    if attachment is not None:
        writer.add_attachment(*attachment)
    if user_password is not None:
        writer.encrypt(user_password, owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_zip(name: str, data: bytes, password: bytes) -> bytes:
    """A one-member ZIP with traditional PKWARE encryption (APPNOTE 6.1), stored.

    Python's zipfile decrypts these but cannot write them, so the bytes are laid out
    here: local header, 12-byte encryption header, data, central directory, end record.
    """
    crc = zlib.crc32(data)
    keys = [0x12345678, 0x23456789, 0x34567890]

    def crc_step(value: int, byte: int) -> int:
        return zlib.crc32(bytes([byte]), value ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc_step(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc_step(keys[2], keys[1] >> 24)

    def encrypt(plain: bytes) -> bytes:
        out = bytearray()
        for byte in plain:
            temp = (keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            update(byte)
        return bytes(out)

    for byte in password:
        update(byte)
    sealed = encrypt(bytes(range(11)) + bytes([crc >> 24])) + encrypt(data)
    filename = name.encode()
    fields = struct.pack("<HHHHIII", 1, 0, 0, 0, crc, len(sealed), len(data))
    local = b"PK\x03\x04" + struct.pack("<H", 20) + fields + struct.pack("<HH", len(filename), 0)
    central = (
        b"PK\x01\x02"
        + struct.pack("<HH", 20, 20)
        + fields
        + struct.pack("<HHHHHII", len(filename), 0, 0, 0, 0, 0, 0)
        + filename
    )
    body = local + filename + sealed
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(body), 0)
    return body + central + end


def with_attachment(
    data: bytes,
    filename: str,
    content_type: str = "application/octet-stream",
    *,
    sender: str = "alice@example.nhs.uk",
    to: str = "carer@gmail.test",
    subject: str = "Notes",
) -> bytes:
    """A message with a harmless text body and one attachment (base64, as clients send),
    with CRLF line ends, ready for SMTP."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((filename, data)))}@example.nhs.uk>"
    msg.set_content("Please see the attached.\n")
    maintype, subtype = content_type.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()
