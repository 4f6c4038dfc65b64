"""SemanticTokens from the wire: a message whose parts disagree is refused where it is converted."""

from __future__ import annotations

import array

import pytest
from edge_lam_msgs.msg import SemanticTokens

from edge_lam.wire.tokens import from_semantic_tokens


@pytest.mark.parametrize(("ids", "grid", "scores", "why"), [
    ([], [65536, 65536, 65536, 65536], [], "does not hold 0 ids"),  # 2^64 cells: numpy's product wraps to 0
    ([1, 2, 3], [2, 2], [], "does not hold 3 ids"),
    ([1, 2, 3], [], [0.5], "1 scores for 3 ids"),
])
def test_a_message_whose_parts_disagree_is_refused(ids, grid, scores, why):
    msg = SemanticTokens(token_ids=array.array("I", ids), token_shape=array.array("I", grid),
                         scores=array.array("f", scores))
    with pytest.raises(ValueError, match=why):
        from_semantic_tokens(msg)
