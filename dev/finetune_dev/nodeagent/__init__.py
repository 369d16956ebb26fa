"""Local node agent (test and demo tooling, not part of the product): a Node whose pods run as
real local processes. See docs/node-agent.md for what it does and, plainly, what it does not."""

from finetune_api.labels import AGENT_LABEL
from finetune_dev.nodeagent.paths import default_root, find_log, log_path, pod_dir, pvc_dir
from finetune_dev.nodeagent.process import AgentProcess, run_agent, start_agent

__all__ = ["AGENT_LABEL", "AgentProcess", "default_root", "find_log", "log_path", "pod_dir",
           "pvc_dir", "run_agent", "start_agent"]
