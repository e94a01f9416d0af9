"""DKD against ASD as a Slicer plot, so the user sees why a volume was proposed."""

from __future__ import annotations

import slicer
import vtk

from .ranking import COLUMN_ASD, COLUMN_DKD, COLUMN_SELECTED, COLUMN_VOLUME

ROLE_ATTRIBUTE = "ASSFT.Role"
CHART_ROLE = "scores-chart"
ALL_SERIES_ROLE = "scores-all"
PROPOSED_SERIES_ROLE = "scores-proposed"
PROPOSED_TABLE_ROLE = "scores-proposed-table"
#: Series colours (RGB): every volume grey, the proposed ones orange (the legend names both).
ALL_COLOR = (0.55, 0.55, 0.55)
PROPOSED_COLOR = (0.95, 0.5, 0.1)


def _nodeWithRole(scene, className: str, role: str, name: str):
    for i in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(i, className)
        if node.GetAttribute(ROLE_ATTRIBUTE) == role:
            return node
    node = scene.AddNewNodeByClass(className, name)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    return node


def _proposedTable(scene, rankingTable):
    """A small table with the proposed rows of the ranking (a plot series cannot filter rows)."""
    table = _nodeWithRole(scene, "vtkMRMLTableNode", PROPOSED_TABLE_ROLE, "ASSFT proposed scores")
    source = rankingTable.GetTable()
    selected = source.GetColumnByName(COLUMN_SELECTED)
    columns = {name: source.GetColumnByName(name) for name in (COLUMN_VOLUME, COLUMN_ASD, COLUMN_DKD)}
    output = {COLUMN_VOLUME: vtk.vtkStringArray(), COLUMN_ASD: vtk.vtkDoubleArray(), COLUMN_DKD: vtk.vtkDoubleArray()}
    for name, array in output.items():
        array.SetName(name)
    for row in range(source.GetNumberOfRows()):
        if selected is not None and int(selected.GetValue(row)):
            for name, array in output.items():
                array.InsertNextValue(columns[name].GetValue(row))
    wasModifying = table.StartModify()
    table.RemoveAllColumns()
    for name in (COLUMN_VOLUME, COLUMN_ASD, COLUMN_DKD):
        table.GetTable().AddColumn(output[name])
    table.Modified()
    table.EndModify(wasModifying)
    return table


def _series(scene, role: str, name: str, tableNode, color, markerSize: float):
    series = _nodeWithRole(scene, "vtkMRMLPlotSeriesNode", role, name)
    series.SetAndObserveTableNodeID(tableNode.GetID())
    series.SetXColumnName(COLUMN_ASD)
    series.SetYColumnName(COLUMN_DKD)
    series.SetLabelColumnName(COLUMN_VOLUME)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
    series.SetMarkerSize(markerSize)
    series.SetColor(*color)
    return series


def scoresChart(scene, rankingTable):
    """Create or update the DKD-against-ASD scatter chart of a ranking table.

    Two series: all volumes (grey) and the proposed ones (orange, larger), each point labelled with its volume.

    Returns:
        the ``vtkMRMLPlotChartNode``.
    """
    proposed = _proposedTable(scene, rankingTable)
    allSeries = _series(scene, ALL_SERIES_ROLE, "All volumes", rankingTable, ALL_COLOR, 8.0)
    proposedSeries = _series(scene, PROPOSED_SERIES_ROLE, "Proposed", proposed, PROPOSED_COLOR, 12.0)
    chart = _nodeWithRole(scene, "vtkMRMLPlotChartNode", CHART_ROLE, "ASSFT DKD vs ASD")
    wasModifying = chart.StartModify()
    chart.RemoveAllPlotSeriesNodeIDs()
    chart.AddAndObservePlotSeriesNodeID(allSeries.GetID())
    chart.AddAndObservePlotSeriesNodeID(proposedSeries.GetID())
    chart.SetTitle("DKD against ASD")
    chart.SetXAxisTitle("ASD")
    chart.SetYAxisTitle("DKD")
    chart.SetLegendVisibility(True)
    chart.EndModify(wasModifying)
    return chart


def showChartInLayout(appLogic, chartNode) -> bool:
    """Switch the view layout to one with a plot view showing ``chartNode`` (uses the Plots module logic).

    Returns:
        False when no Plots logic is registered with ``appLogic`` (e.g. a bare headless scene).
    """
    plotsLogic = appLogic.GetModuleLogic("Plots") if appLogic is not None else None
    if plotsLogic is None:
        return False
    plotsLogic.ShowChartInLayout(chartNode)
    return True
