"""The panel's connection to its parameter node, made once per parameter node (no Qt here).

``parameterNodeWrapper``'s ``connectGui`` returns a tag for ``disconnectGui``, but on Slicer 5.8 it returns None,
so ``disconnectGui(None)`` does nothing: a widget that connects on every ``enter()`` and disconnects on ``exit()``
(the module template's pattern) adds another set of connections each time the module is shown. Here the panel is
connected when the parameter node changes and only then; it stays connected while the module is hidden.
"""

from __future__ import annotations


def sameParameterNode(first, second) -> bool:
    """Whether two parameter node wrappers wrap the same MRML node (each ``getParameterNode()`` makes a new
    wrapper)."""
    if first is None or second is None:
        return first is second
    return getattr(first, "parameterNode", first) is getattr(second, "parameterNode", second)


class GuiBinding:
    """Connects ``ui`` to at most one parameter node at a time.

    Args:
        ui: the panel's widgets (``slicer.util.childWidgetVariables``).
    """

    def __init__(self, ui):
        self.ui = ui
        self.node = None
        self.tag = None

    def bind(self, parameterNode) -> bool:
        """Connect the panel to ``parameterNode`` unless it already is; None disconnects.

        Returns:
            True when the connection changed.
        """
        if sameParameterNode(parameterNode, self.node):
            return False
        self.unbind()
        if parameterNode is not None:
            self.tag = parameterNode.connectGui(self.ui)
            self.node = parameterNode
        return True

    def unbind(self) -> None:
        """Disconnect from the current node (when the installed Slicer gave a tag to do it with)."""
        if self.node is not None and self.tag is not None:
            self.node.disconnectGui(self.tag)
        self.node = None
        self.tag = None
