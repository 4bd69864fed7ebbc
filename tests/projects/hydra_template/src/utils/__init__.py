"""The template's `src/utils` (instantiators, extras, task wrapper), condensed into one module.

Differences from the template: plain `logging` instead of `RankedLogger`, and the config tree
is printed as YAML instead of with Rich (Rich is not a dependency here).
"""

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_callbacks(callbacks_cfg: DictConfig) -> List[Callback]:
    """Instantiate every callback node (a dict with a `_target_`) of the callbacks config."""
    callbacks: List[Callback] = []
    if not callbacks_cfg:
        log.warning("No callback configs found! Skipping..")
        return callbacks
    if not isinstance(callbacks_cfg, DictConfig):
        raise TypeError("Callbacks config must be a DictConfig!")
    for _, cb_conf in callbacks_cfg.items():
        if isinstance(cb_conf, DictConfig) and "_target_" in cb_conf:
            log.info(f"Instantiating callback <{cb_conf._target_}>")
            callbacks.append(hydra.utils.instantiate(cb_conf))
    return callbacks


def instantiate_loggers(logger_cfg: DictConfig) -> List[Logger]:
    """Instantiate every logger node (a dict with a `_target_`) of the logger config."""
    logger: List[Logger] = []
    if not logger_cfg:
        log.warning("No logger configs found! Skipping...")
        return logger
    if not isinstance(logger_cfg, DictConfig):
        raise TypeError("Logger config must be a DictConfig!")
    for _, lg_conf in logger_cfg.items():
        if isinstance(lg_conf, DictConfig) and "_target_" in lg_conf:
            log.info(f"Instantiating logger <{lg_conf._target_}>")
            logger.append(hydra.utils.instantiate(lg_conf))
    return logger


def extras(cfg: DictConfig) -> None:
    """Optional utilities before the task starts: ignore warnings, print and save the config."""
    if not cfg.get("extras"):
        log.warning("Extras config not found! <cfg.extras=null>")
        return
    if cfg.extras.get("ignore_warnings"):
        log.info("Disabling python warnings! <cfg.extras.ignore_warnings=True>")
        warnings.filterwarnings("ignore")
    if cfg.extras.get("print_config"):
        log.info("Printing config tree! <cfg.extras.print_config=True>")
        text = OmegaConf.to_yaml(cfg, resolve=True)
        print(text)
        Path(cfg.paths.output_dir, "config_tree.log").write_text(text)


def task_wrapper(task_func: Callable) -> Callable:
    """Log the exception of a failed task to the run's log file, and always print the output dir."""

    def wrap(cfg: DictConfig) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        try:
            metric_dict, object_dict = task_func(cfg=cfg)
        except Exception as ex:
            log.exception("")
            raise ex
        finally:
            log.info(f"Output dir: {cfg.paths.output_dir}")
        return metric_dict, object_dict

    return wrap


def get_metric_value(metric_dict: Dict[str, Any], metric_name: Optional[str]) -> Optional[float]:
    """The value of the metric to optimize (for Hydra sweepers), if one is named."""
    if not metric_name:
        log.info("Metric name is None! Skipping metric value retrieval...")
        return None
    if metric_name not in metric_dict:
        raise Exception(f"Metric value not found! <metric_name={metric_name}>")
    metric_value = metric_dict[metric_name].item()
    log.info(f"Retrieved metric value! <{metric_name}={metric_value}>")
    return metric_value
