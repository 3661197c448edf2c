"""Device files: loading a directory, the problems a broken file gives, the SLP attribute mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.saproxy.devices import configured_attributes, load_devices
from sipmob.service.config import ConfigError
from sipmob.slp.attrs import format_attr_list, parse_attr_list

TV = '''uri = "sip:tv@192.0.2.20"
name = "Living room TV"
room = "living-room"
floor = 0
audio = "recvonly"
video = "recvonly"
audio_codecs = ["PCMU", "PCMA", "G722"]
video_codecs = ["H263", "H264"]
image_formats = ["16CIF:8", "4CIF:6", "CIF:4", "QCIF:3"]
display_width = 1920
display_height = 1080
vendor = "acme"
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def problems(folder: Path, **kwargs: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_devices(folder, **kwargs)
    return [str(p) for p in info.value.problems]


def test_every_toml_file_is_one_device_sorted_by_name(tmp_path: Path) -> None:
    write(tmp_path, "tv", TV)
    write(tmp_path, "cam", 'uri = "sip:cam@192.0.2.30"\nvideo = "sendonly"\n')
    (tmp_path / "phone.toml.example").write_text('uri = "sip:phone@192.0.2.40"\n')
    assert [d.id for d in load_devices(tmp_path)] == ["cam", "tv"]


def test_a_missing_directory_is_no_device(tmp_path: Path) -> None:
    assert load_devices(tmp_path / "absent") == ()


def test_a_bad_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nvideo = "sideways"\n')
    (problem,) = problems(tmp_path)
    assert problem.startswith(f"{path}: video: must be one of")


def test_broken_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nroom = \n')
    (problem,) = problems(tmp_path)
    assert problem.startswith(f"{path}: not valid TOML") and "line 2" in problem


def test_problems_of_every_file_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, "a", 'uri = "sip:a@192.0.2.1"\nfloor = "ground"\n')
    write(tmp_path, "b", 'room = "hall"\n')
    assert [p.split(": ")[1] for p in problems(tmp_path)] == ["floor", "uri"]


def test_an_unknown_key_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\ncolour = "black"\n')
    assert "colour: unknown key" in problems(tmp_path)[0]


def test_a_uri_that_is_not_sip_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sips:tv@192.0.2.20"\n')
    assert "uri: must be a sip: URI" in problems(tmp_path)[0]


def test_the_same_uri_in_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "a", 'uri = "sip:tv@192.0.2.20"\n')
    write(tmp_path, "b", 'uri = "sip:tv@192.0.2.20"\n')
    assert "is already the uri of" in problems(tmp_path)[0]


def test_an_aor_needs_an_outbound_proxy(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@home.example"\n')
    assert "set [sip] outbound_proxy" in problems(tmp_path, have_outbound_proxy=False)[0]
    (device,) = load_devices(tmp_path, have_outbound_proxy=True)
    assert not device.direct


def test_image_formats_need_video(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nimage_formats = ["CIF:4"]\n')
    assert "image_formats: needs video" in problems(tmp_path)[0]


def test_an_image_format_outside_h263_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nvideo = "recvonly"\nimage_formats = ["HD:1"]\n')
    assert "image_formats: item 1: must be SIZE:MPI" in problems(tmp_path)[0]


def test_display_width_without_height_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\ndisplay_width = 800\n')
    assert "display_width and display_height go together" in problems(tmp_path)[0]


def test_an_allow_entry_must_be_a_user_uri(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nallow = ["anna"]\n')
    assert "allow: item 1" in problems(tmp_path)[0]


def test_the_tv_maps_to_the_schema_example(tmp_path: Path) -> None:
    write(tmp_path, "tv", TV)
    (tv,) = load_devices(tmp_path)
    assert format_attr_list(configured_attributes(tv)) == (
        "(name=Living room TV),(room=living-room),(floor=0),(media=audio-recvonly,video-recvonly),"
        "(audio-codecs=PCMU,PCMA,G722),(video-codecs=H263,H264),(image-formats=16CIF:8,4CIF:6,CIF:4,QCIF:3),"
        "(display-width=1920),(display-height=1080),(vendor=acme),(mobility=basic)")


def test_the_allow_list_stays_out_of_slp_and_restricted_is_set(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nallow = ["sip:anna@example.org"]\n')
    (tv,) = load_devices(tmp_path)
    wire = format_attr_list(configured_attributes(tv))
    assert "anna" not in wire
    assert parse_attr_list(wire)["restricted"].values == (True,)


def test_a_room_spelled_as_a_number_becomes_an_integer(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nroom = "101"\n')
    (tv,) = load_devices(tmp_path)
    assert configured_attributes(tv)["room"].values == (101,)


def test_reserved_characters_in_a_name_survive_the_wire(tmp_path: Path) -> None:
    write(tmp_path, "tv", 'uri = "sip:tv@192.0.2.20"\nname = "TV (big, new)"\n')
    (tv,) = load_devices(tmp_path)
    wire = format_attr_list(configured_attributes(tv))
    assert parse_attr_list(wire)["name"].values == ("TV (big, new)",)


def test_the_example_files_load(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[3] / "etc" / "sipmob" / "devices.d"
    for example in examples.glob("*.toml.example"):
        write(tmp_path, example.name.removesuffix(".toml.example"), example.read_text())
    devices = load_devices(tmp_path, have_outbound_proxy=True)
    assert len(devices) == 4
