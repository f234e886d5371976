"""Plans from LIBERO goals (no simulation): one step per conjunct, ordered by what the scene imposes."""

import pytest

from fastwam.envs.libero_plan import Step, conjuncts, plan

DRAWER = "wooden_cabinet_1_top_region"
CONTAINERS = {DRAWER: DRAWER, "microwave_1_heating_region": "microwave_1"}


def steps(goal, containers=CONTAINERS):
    return [str(s) for s in plan(goal, containers)]


def test_a_single_placement_is_one_step():
    assert steps([["On", "akita_black_bowl_1", "plate_1"]]) == ["(on akita_black_bowl_1 plate_1)"]
    assert steps([["In", "alphabet_soup_1", "basket_1_contain_region"]]) == ["(in alphabet_soup_1 basket_1_contain_region)"]


def test_a_region_inside_a_drawer_or_a_door_is_opened_first():
    assert steps([["In", "akita_black_bowl_1", DRAWER]]) == [f"(open {DRAWER}) [precondition]",
                                                             f"(in akita_black_bowl_1 {DRAWER})"]
    assert steps([["In", "white_yellow_mug_1", "microwave_1_heating_region"], ["Close", "microwave_1"]]) == [
        "(open microwave_1) [precondition]", "(in white_yellow_mug_1 microwave_1_heating_region)", "(close microwave_1)"]
    # "on" a cabinet's top is not inside it: nothing to open
    assert steps([["On", "wine_bottle_1", "wooden_cabinet_1_top_side"]]) == ["(on wine_bottle_1 wooden_cabinet_1_top_side)"]


def test_close_comes_after_what_goes_inside_and_switches_after_placing():
    # the goal's own order is Close first (KITCHEN_SCENE4) and Turnon first (KITCHEN_SCENE3)
    assert steps([["Close", "white_cabinet_1_bottom_region"], ["In", "akita_black_bowl_1", "white_cabinet_1_bottom_region"]],
                 {"white_cabinet_1_bottom_region": "white_cabinet_1_bottom_region"}) == [
        "(open white_cabinet_1_bottom_region) [precondition]", "(in akita_black_bowl_1 white_cabinet_1_bottom_region)",
        "(close white_cabinet_1_bottom_region)"]
    assert steps([["Turnon", "flat_stove_1"], ["On", "moka_pot_1", "flat_stove_1_cook_region"]]) == [
        "(on moka_pot_1 flat_stove_1_cook_region)", "(turnon flat_stove_1)"]
    assert steps([["On", "moka_pot_1", "flat_stove_1_cook_region"], ["On", "moka_pot_2", "flat_stove_1_cook_region"],
                  ["Turnon", "flat_stove_1"]]) == ["(on moka_pot_1 flat_stove_1_cook_region)",
                                                   "(on moka_pot_2 flat_stove_1_cook_region)", "(turnon flat_stove_1)"]


def test_the_goals_order_is_kept_within_a_rank_and_a_goal_open_is_no_precondition():
    assert steps([["In", "b", "basket"], ["In", "a", "basket"]]) == ["(in b basket)", "(in a basket)"]
    assert steps([["Open", DRAWER], ["In", "bowl", DRAWER]]) == [f"(open {DRAWER})", f"(in bowl {DRAWER})"]
    assert plan([["Open", DRAWER]], CONTAINERS) == [Step("open", (DRAWER,), goal=True)]


def test_unsupported_predicates_and_malformed_goals_are_refused_by_name():
    with pytest.raises(ValueError, match=r"goal conjunct \(Stack a b\): the expert has no skill for predicate 'Stack'"):
        conjuncts([["Stack", "a", "b"]])
    with pytest.raises(ValueError, match=r"goal conjunct \(On a\): on takes 2 argument\(s\), got 1"):
        conjuncts([["On", "a"]])
    with pytest.raises(ValueError, match="empty goal"):
        conjuncts([])
    with pytest.raises(ValueError, match=f"goal asks {DRAWER} both open and closed"):
        plan([["Open", DRAWER], ["Close", DRAWER]], CONTAINERS)
