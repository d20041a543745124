"""Run in the Airflow virtual environment (never imports conveyor): load the DAG folder, run one DAG with dag.test().

Usage: python airflow_run.py DAG_FOLDER import-check
       python airflow_run.py [--use-executor] DAG_FOLDER DAG_ID [RUN_CONF_JSON]

``--use-executor`` runs the tasks on the configured executor (``AIRFLOW__CORE__EXECUTOR``, e.g. LocalExecutor) instead
of in this process.

Prints one JSON object on its last stdout line: import errors and DAG ids, or the run's state, each task's state and
return-value XCom, and the runs of every DAG (to see what a TriggerDagRunOperator created).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _bag(folder: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=folder)


def _decode(value: Any) -> Any:
    """XCom values are stored as JSON; some versions hand back the text, some the decoded value."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def main(argv: list[str]) -> dict[str, Any]:
    use_executor = "--use-executor" in argv
    argv = [a for a in argv if a != "--use-executor"]
    folder, what = argv[0], argv[1]
    bag = _bag(folder)
    if what == "import-check":
        return {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
    conf = json.loads(argv[2]) if len(argv) > 2 else None
    dag = bag.get_dag(what)
    if dag is None:
        raise SystemExit(f"no DAG {what!r} in {folder}: {bag.import_errors}")
    dr = dag.test(run_conf=conf, use_executor=use_executor)

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == what, TaskInstance.run_id == dr.run_id)
        ).all()
        tasks = {ti.task_id: str(ti.state) for ti in tis}
        xcoms = {}
        for row in session.scalars(
            select(XComModel).where(
                XComModel.dag_id == what, XComModel.run_id == dr.run_id, XComModel.key == "return_value"
            )
        ).all():
            xcoms[row.task_id] = _decode(row.value)
        runs = [
            {"dag_id": r.dag_id, "run_id": r.run_id, "state": str(r.state), "run_type": str(r.run_type), "conf": r.conf}
            for r in session.scalars(select(DagRun)).all()
        ]
    return {"dag_id": what, "run_id": dr.run_id, "state": str(dr.state), "tasks": tasks, "xcom": xcoms, "runs": runs}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), default=str))
