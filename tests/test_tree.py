import pytest
import torch

from specdecode.tree import DraftTree, tree_attention


def test_chain_is_a_tree_with_consecutive_parents():
    t = DraftTree.chain([5, 6, 7])
    assert t.parents == [-1, 0, 1]
    assert t.is_chain and t.depths() == [1, 2, 3]
    assert t.children(-1) == [0] and t.children(2) == []


def test_tree_children_depths_and_paths():
    t = DraftTree([1, 2, 3, 4, 5], [-1, -1, 0, 0, 2])
    assert not t.is_chain
    assert t.children(-1) == [0, 1] and t.children(0) == [2, 3]
    assert t.depths() == [1, 1, 2, 2, 3]
    assert t.path_to(4) == [0, 2, 4]


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-2], [-1, 0, 3, 1]])
def test_parents_must_precede_children(parents):
    with pytest.raises(ValueError):
        DraftTree(list(range(len(parents))), parents)


def test_draft_probs_need_one_row_per_node():
    with pytest.raises(ValueError):
        DraftTree.chain([1, 2], torch.ones(3, 4))


def test_mask_and_positions_follow_the_parents():
    mask, pos = tree_attention([-1, -1, 0], past_len=2, dtype=torch.float32, device=torch.device("cpu"))
    assert mask.shape == (1, 1, 4, 6)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 1, 1, 0, 0, 0],  # root: the past and itself
        [1, 1, 1, 1, 0, 0],  # node 0: root, itself
        [1, 1, 1, 0, 1, 0],  # node 1: root, itself (not its sibling)
        [1, 1, 1, 1, 0, 1],  # node 2: root, node 0, itself
    ]
    assert mask.min() == torch.finfo(torch.float32).min
    assert pos.tolist() == [[2, 3, 3, 4]]
