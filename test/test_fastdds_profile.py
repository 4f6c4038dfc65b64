"""The launch files' fastdds_profile argument: a profile name, a file of the user's, or a clear refusal."""

import pytest

from edge_lam.ros.fastdds import profile_path


def test_a_profile_name_is_a_file_of_config_and_a_path_is_taken_as_it_is(tmp_path):
    assert profile_path("interhost", "/share/config") == "/share/config/fastdds_interhost.xml"
    assert profile_path("onehost", "/share/config") == "/share/config/fastdds.xml"
    own = tmp_path / "mine.xml"
    own.write_text("<dds/>")
    assert profile_path(str(own), "/share/config") == str(own)


def test_anything_else_is_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match="expected onehost, interhost or the path of an XML file"):
        profile_path("wifi", "/share/config")
