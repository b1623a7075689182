"""``condseg nnunet``: condseg's trainer variants on nnU-Net v2 (the ``condseg[nnunet]`` extra).

``trainers`` prints the folder for ``nnUNet_extTrainer``; ``plan``, ``train`` and ``predict``
set that variable and hand their arguments, unchanged, to nnU-Net's own
``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train`` and ``nnUNetv2_predict`` (so ``-h`` shows
nnU-Net's help).
"""

from __future__ import annotations

import typer

from condseg.cli.render import user_errors

app = typer.Typer(help="Train and predict with condseg's trainer variants on nnU-Net v2.",
                  no_args_is_help=True)
_PASS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("trainers")
def trainers() -> None:
    """Print the folder of condseg's trainer variants: export nnUNet_extTrainer=$(condseg
    nnunet trainers), then name one with nnU-Net's -tr (nnUNetTrainerPDCRUAFR, ...)."""
    from condseg.nnunet import require, trainers_folder

    with user_errors():
        require()
    print(trainers_folder())


def _command(name: str, target: str) -> None:
    def run(ctx: typer.Context) -> None:
        from condseg.nnunet import hand_over, require

        with user_errors():  # up to the hand-over: nnU-Net's own signals and errors after
            require()
            hand_over(name, list(ctx.args))

    run.__doc__ = f"{target} with nnUNet_extTrainer set (arguments passed on unchanged)."
    app.command(name, context_settings=_PASS, add_help_option=False)(run)


for _name, _target in (("plan", "nnUNetv2_plan_and_preprocess"), ("train", "nnUNetv2_train"),
                       ("predict", "nnUNetv2_predict")):
    _command(_name, _target)

