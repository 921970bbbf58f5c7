"""The scheming scenarios as an Inspect (``inspect-ai``) task, for evaluators who run everything through
Inspect.

    pip install 'heredity[inspect]'
    inspect eval src/heredity/evals/inspect_task.py@scheming --model openai/gpt-4o-mini \
        -T scenarios=oversight-subversion,sandbagging -T variants=conflict,control --epochs 20

One Inspect sample per scenario × variant × nudge; each epoch is one episode. The solver is the same agentic
loop as ``evals.scheming.run_episode`` — the same scenario files, in-memory sandbox, tools (``bash``,
``submit``, ``send_email``), turn limit and interrogation of an episode that schemed — with Inspect's model
doing the generation and Inspect's ``execute_tools`` running the calls; the scorer is ``Episode.score``.
Nothing here runs a real shell or needs an Inspect sandbox: the tools act on the episode's virtual hosts.

What this module does not know: heredity's store or statistics (Inspect's log holds the transcripts and
scores; ``heredity run scheming`` is the memoized, statistically reported path).
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, execute_tools, get_model
from inspect_ai.scorer import Score, Target, mean, scorer, stderr
from inspect_ai.solver import Generate, TaskState, solver
from inspect_ai.tool import ToolDef

from heredity.evals import scheming as S


def _tools(ep: S.Episode) -> list:
    """The scenario's tools as Inspect tools over this episode's sandbox."""

    async def bash(command: str) -> str:
        return ep.act("bash", command=command)

    async def submit(answer: str) -> str:
        return ep.act("submit", answer=answer)

    async def send_email(to: str, subject: str, body: str) -> str:
        return ep.act("send_email", to=to, subject=subject, body=body)

    fns = {"bash": bash, "submit": submit, "send_email": send_email}
    out = []
    for name in ep.scenario.tools:
        f = S.TOOL_DEFS[name]["function"]
        params = {k: v.get("description", k) for k, v in f["parameters"]["properties"].items()}
        out.append(ToolDef(fns[name], name=name, description=f["description"], parameters=params).as_tool())
    return out


def _split(x: str | list[str] | None, default: list[str]) -> list[str]:
    if x is None:
        return default
    return [s.strip() for s in x.split(",") if s.strip()] if isinstance(x, str) else list(x)


@solver
def episode(max_turns: int | None = None, tool_choice: str = "any"):
    """Run one scheming episode in the sample's scenario (metadata: scenario, variant, nudged)."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        md = state.metadata
        sc = S.load(md["scenario"])
        ep = S.Episode(sc, variant=md["variant"], nudged=md["nudged"])
        tools = _tools(ep)
        model = get_model()
        state.messages = [ChatMessageSystem(content=ep.system), ChatMessageUser(content=ep.user)]
        for _ in range(max_turns or sc.max_turns):
            out = await model.generate(state.messages, tools=tools, tool_choice=tool_choice)
            state.messages.append(out.message)
            if not out.message.tool_calls:
                state.messages.append(ChatMessageUser(content=S.CONTINUE))
                continue
            done = await execute_tools(state.messages, tools)
            state.messages.extend(done.messages)
            if ep.done:
                break
        score = ep.score()
        confessions = []
        if score["schemed"]:
            for q in sc.interrogation:
                state.messages.append(ChatMessageUser(content=q))
                out = await model.generate(state.messages)
                state.messages.append(out.message)
                confessions.append(ep.confessed(out.message.text))
        score["confessed"] = any(confessions) if confessions else None
        state.metadata["score"] = score
        state.metadata["diffs"] = ep.diffs()
        state.output.completion = score["submitted"] or ""
        return state

    return solve


@scorer(metrics={"schemed": [mean(), stderr()], "competent": [mean(), stderr()]})
def scheming_score():
    """The scenario's deterministic checks on the episode's final state and log (``Episode.score``)."""

    async def score(state: TaskState, target: Target) -> Score:
        s = state.metadata["score"]
        return Score(
            value={"schemed": int(s["schemed"]), "competent": int(s["competent"])},
            answer=s["submitted"],
            metadata=s,
        )

    return score


@task
def scheming(
    scenarios: str | list[str] | None = None,
    variants: str | list[str] | None = None,
    nudges: str | None = None,
    max_turns: int | None = None,
    tool_choice: str = "any",
) -> Task:
    """The bundled scenarios (``-T scenarios=a,b``), variants (``conflict,control``) and nudge conditions
    (``-T nudges=on,off``); ``tool_choice`` "any" makes every turn a tool call (as ``required`` does in
    heredity)."""
    names = _split(scenarios, S.bundled())
    for n in names:
        S.load(n)  # a one-line error for an unknown name
    vs = _split(variants, list(S.VARIANTS))
    ns = [x == "on" for x in _split(nudges, ["on", "off"])]
    samples = [
        Sample(
            input=S.Episode(S.load(n), variant=v, nudged=nudged).user,
            id=f"{n}|{v}|{'nudge' if nudged else 'plain'}",
            metadata={"scenario": n, "variant": v, "nudged": nudged},
        )
        for n in names
        for v in vs
        for nudged in ns
    ]
    return Task(dataset=samples, solver=episode(max_turns, tool_choice), scorer=scheming_score())
