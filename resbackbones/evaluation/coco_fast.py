"""An exact, vectorised re-implementation of pycocotools' COCOeval (bbox / segm) for large result sets.

pycocotools spends its time in Python loops (evaluateImg's greedy matching, accumulate's per-threshold loops);
faster-coco-eval moves them to C++ but its precision values differ from pycocotools' in the last bit, so its AP can
differ at 1e-17. This module keeps every floating-point operation of pycocotools (IoUs from pycocotools.mask.iou, the
same sorts with the same stable order, the same tp / (fp + tp + eps) expressions) and only changes how the work is
batched: greedy matching runs for all (image, category, area range) groups at once, one detection rank at a time;
accumulate works on whole arrays. summarize() is pycocotools' own. tests/test_coco_eval_*.py check the 12 numbers
and the precision array are identical to pycocotools'.
"""
import contextlib
import io
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval, Params


def _ann_to_rle(segm, height: int, width: int):
    # pycocotools.coco.COCO.annToRLE, without building a COCO index.
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_util.frPyObjects(segm, height, width)
    return segm


def _prepare_results(dets: List[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray, List[Any]]:
    """What COCO.loadRes adds: (areas, boxes [N, 4], segmentations) per result, chosen by the first result's keys."""
    if "bbox" in dets[0] and not dets[0]["bbox"] == []:
        boxes = [d["bbox"] for d in dets]
        areas = [b[2] * b[3] for b in boxes]
        segms = [d.get("segmentation") for d in dets]
        return np.asarray(areas, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4), segms
    segms = [d["segmentation"] for d in dets]
    areas = [mask_util.area(s) for s in segms]
    boxes = [d["bbox"] if "bbox" in d else mask_util.toBbox(s) for d, s in zip(dets, segms)]
    return np.asarray(areas, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4), segms


class FastCOCOeval:
    """evaluate(gt_dict, results, iou_type) -> a pycocotools COCOeval whose eval / stats are filled in.

    The returned object is a real pycocotools COCOeval (params, eval["precision"|"recall"|"scores"], stats), so
    everything downstream (summarize, per-category AP) is pycocotools' code.
    """

    def __init__(self, gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"FastCOCOeval supports bbox and segm, got {iou_type!r}")
        self.gt, self.results, self.iou_type = gt, list(results), iou_type
        self.params = Params(iouType=iou_type)
        self.params.imgIds = sorted({img["id"] for img in gt["images"]})
        self.params.catIds = sorted({cat["id"] for cat in gt["categories"]})

    # -- grouping (COCOeval._prepare) ---------------------------------------------------------------------------
    def _groups(self):
        p, gt = self.params, self.gt
        images = {img["id"]: img for img in gt["images"]}
        img_index = {img_id: i for i, img_id in enumerate(p.imgIds)}
        cat_index = {cat_id: k for k, cat_id in enumerate(p.catIds)}
        segm = self.iou_type == "segm"
        # Ground truth, per (image, category) in annotation order (COCO.getAnnIds walks images in imgToAnns order).
        gts = defaultdict(list)
        by_image = defaultdict(list)
        for ann in gt["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for img_id in p.imgIds:
            for ann in by_image.get(img_id, ()):
                if ann["category_id"] in cat_index:
                    gts[img_id, ann["category_id"]].append(ann)
        dt_area, dt_box, dt_segm = _prepare_results(self.results)
        dts = defaultdict(list)
        for index, det in enumerate(self.results):
            dts[det["image_id"], det["category_id"]].append(index)
        keys = sorted(set(gts) | set(dts), key=lambda key: (cat_index[key[1]], img_index[key[0]]))
        groups = []
        max_det = p.maxDets[-1]
        for img_id, cat_id in keys:
            g_anns = gts.get((img_id, cat_id), [])
            d_idx = np.asarray(dts.get((img_id, cat_id), []), dtype=np.int64)
            scores = np.asarray([self.results[i]["score"] for i in d_idx], dtype=np.float64)
            order = np.argsort(-scores, kind="mergesort")[:max_det]
            d_idx, scores = d_idx[order], scores[order]
            crowd = [int(a.get("iscrowd", 0)) for a in g_anns]
            if len(g_anns) and len(d_idx):
                if segm:
                    img = images[img_id]
                    g_obj = [_ann_to_rle(a["segmentation"], img["height"], img["width"]) for a in g_anns]
                    d_obj = [_ann_to_rle(dt_segm[i], img["height"], img["width"]) for i in d_idx]
                else:
                    g_obj = [a["bbox"] for a in g_anns]
                    d_obj = [self.results[i]["bbox"] for i in d_idx] if "bbox" in self.results[0] else \
                        dt_box[d_idx].tolist()
                ious = np.asarray(mask_util.iou(d_obj, g_obj, crowd), dtype=np.float64).reshape(len(d_idx), -1)
            else:
                ious = np.zeros((len(d_idx), len(g_anns)))
            groups.append(dict(
                k=cat_index[cat_id], i=img_index[img_id], ious=ious, scores=scores,
                dt_ids=d_idx + 1, dt_area=dt_area[d_idx],
                gt_ids=np.asarray([a["id"] for a in g_anns], dtype=np.int64),
                gt_area=np.asarray([a["area"] for a in g_anns], dtype=np.float64),
                gt_crowd=np.asarray(crowd, dtype=bool),
                # COCOeval._prepare: gt["ignore"] = "iscrowd" in gt and gt["iscrowd"]
                gt_ignore=np.asarray([bool("iscrowd" in a and a["iscrowd"]) for a in g_anns], dtype=bool),
            ))
        return groups

    # -- matching (COCOeval.evaluateImg for every group and area range at once) ---------------------------------
    def _match(self, groups):
        """Greedy matching of every group, for every area range and IoU threshold, batched per padded size.

        Returns per group: (dtm [A, T, D] matched gt id or 0, dt_ignore [A, T, D], gt_ignore [A, G] sorted as
        evaluateImg sorts them: non-ignored first, stable).
        """
        p = self.params
        thresholds = np.asarray([min(t, 1 - 1e-10) for t in p.iouThrs])
        area_lo = np.asarray([r[0] for r in p.areaRng], dtype=np.float64)
        area_hi = np.asarray([r[1] for r in p.areaRng], dtype=np.float64)
        T, A = len(thresholds), len(p.areaRng)
        per_group = [None] * len(groups)
        buckets = defaultdict(list)
        for g_index, group in enumerate(groups):
            D, G = group["ious"].shape
            # Pad to powers of two so one crowded image does not pad every group.
            buckets[(1 << max(G - 1, 0).bit_length(), 1 << max(D - 1, 0).bit_length())].append(g_index)
        for (G_pad, D_pad), members in buckets.items():
            B = len(members)
            ious = np.full((B, D_pad, G_pad), -1.0)
            gt_area = np.zeros((B, G_pad))
            gt_ignore = np.zeros((B, G_pad), dtype=bool)
            crowd = np.zeros((B, G_pad), dtype=bool)
            gt_ids = np.zeros((B, G_pad), dtype=np.int64)
            valid_g = np.zeros((B, G_pad), dtype=bool)
            dt_area = np.zeros((B, D_pad))
            n_dt = np.zeros(B, dtype=np.int64)
            n_gt = np.zeros(B, dtype=np.int64)
            for b, g_index in enumerate(members):
                group = groups[g_index]
                D, G = group["ious"].shape
                ious[b, :D, :G] = group["ious"]
                gt_area[b, :G], gt_ignore[b, :G], crowd[b, :G] = group["gt_area"], group["gt_ignore"], group["gt_crowd"]
                gt_ids[b, :G], valid_g[b, :G] = group["gt_ids"], True
                dt_area[b, :D] = group["dt_area"]
                n_dt[b], n_gt[b] = D, G
            # evaluateImg: g["_ignore"] per area range, then a stable sort putting ignored gts last.
            ig = gt_ignore[:, None, :] | (gt_area[:, None, :] < area_lo[None, :, None]) | \
                (gt_area[:, None, :] > area_hi[None, :, None])  # [B, A, G]
            key = ig.astype(np.int64) + 2 * (~valid_g)[:, None, :]  # padding sorts after every real gt
            order = np.argsort(key, axis=2, kind="stable")
            ig = np.take_along_axis(ig, order, axis=2).reshape(B * A, G_pad)
            crowd_s = np.take_along_axis(np.broadcast_to(crowd[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            ids_s = np.take_along_axis(np.broadcast_to(gt_ids[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            valid_s = np.take_along_axis(np.broadcast_to(valid_g[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            ious_s = np.take_along_axis(ious[:, None, :, :], order[:, :, None, :], axis=3).reshape(B * A, D_pad, G_pad)
            n_dt_s = np.repeat(n_dt, A)
            BA = B * A
            gt_taken = np.zeros((BA, T, G_pad), dtype=bool)
            dt_match = np.zeros((BA, T, D_pad), dtype=np.int64)  # matched gt id (0: none), as pycocotools' dtm
            dt_ig = np.zeros((BA, T, D_pad), dtype=bool)
            thr = thresholds[None, :, None]
            not_ig = ~ig[:, None, :]
            for d in range(D_pad):
                rows = np.nonzero(n_dt_s > d)[0]
                if rows.size == 0:
                    break
                iou_d = ious_s[rows, d, :][:, None, :]  # [R, 1, G]
                # a gt already matched at this threshold is skipped unless it is a crowd region
                available = valid_s[rows, None, :] & (~gt_taken[rows] | crowd_s[rows, None, :])
                candidate = available & (iou_d >= thr)
                chosen = np.full((rows.size, T), -1, dtype=np.int64)
                for pass_mask in (not_ig[rows], ~not_ig[rows]):  # ignored gts only when no non-ignored one matched
                    cand = candidate & pass_mask & (chosen == -1)[:, :, None]
                    masked = np.where(cand, iou_d, -np.inf)
                    # pycocotools keeps the LAST gt reaching the running best (`if iou < best: continue`).
                    last = G_pad - 1 - np.argmax(masked[:, :, ::-1], axis=2)
                    chosen = np.where(cand.any(axis=2), last, chosen)
                r_idx, t_idx = np.nonzero(chosen >= 0)
                m_idx = chosen[r_idx, t_idx]
                b_idx = rows[r_idx]
                dt_match[b_idx, t_idx, d] = ids_s[b_idx, m_idx]
                dt_ig[b_idx, t_idx, d] = ig[b_idx, m_idx]
                gt_taken[b_idx, t_idx, m_idx] = True
            outside = (dt_area[:, None, :] < area_lo[None, :, None]) | (dt_area[:, None, :] > area_hi[None, :, None])
            dt_match = dt_match.reshape(B, A, T, D_pad)
            dt_ig = dt_ig.reshape(B, A, T, D_pad) | ((dt_match == 0) & outside[:, :, None, :])
            ig = ig.reshape(B, A, G_pad)
            for b, g_index in enumerate(members):
                per_group[g_index] = (dt_match[b, :, :, : n_dt[b]], dt_ig[b, :, :, : n_dt[b]], ig[b, :, : n_gt[b]])
        return per_group

    # -- accumulate (COCOeval.accumulate, array-wise) -----------------------------------------------------------
    def _accumulate(self, groups, matches) -> Dict[str, np.ndarray]:
        p = self.params
        T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        by_cat = defaultdict(list)
        for g_index, group in enumerate(groups):
            by_cat[group["k"]].append(g_index)  # already in image order within a category
        eps = np.spacing(1)
        for k, members in by_cat.items():
            ranks = np.concatenate([np.arange(len(groups[g]["scores"])) for g in members])
            all_scores = np.concatenate([groups[g]["scores"] for g in members])
            dtm_cat = np.concatenate([matches[g][0] for g in members], axis=2)  # [A, T, sum D]
            dtig_cat = np.concatenate([matches[g][1] for g in members], axis=2)
            npig_cat = sum((matches[g][2] == 0).sum(axis=1) for g in members)  # [A]
            for a in range(A):
                dtm_all = dtm_cat[a]
                dtig_all = dtig_cat[a]
                npig = int(npig_cat[a])
                if npig == 0:
                    continue
                for m, max_det in enumerate(p.maxDets):
                    keep = ranks < max_det
                    det_scores = all_scores[keep]
                    inds = np.argsort(-det_scores, kind="mergesort")
                    sorted_scores = det_scores[inds]
                    dtm = dtm_all[:, keep][:, inds]
                    dtig = dtig_all[:, keep][:, inds]
                    tps = np.logical_and(dtm, np.logical_not(dtig))
                    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
                    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
                    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
                    nd = tp_sum.shape[1]
                    rc = tp_sum / npig
                    pr = tp_sum / (fp_sum + tp_sum + eps)
                    recall[:, k, a, m] = rc[:, -1] if nd else 0
                    # precision envelope: pr[i-1] = max(pr[i-1], pr[i]) from the end (max is exact)
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    idx = np.stack([np.searchsorted(rc[t], p.recThrs, side="left") for t in range(T)])  # [T, R]
                    ok = idx < nd
                    safe = np.where(ok, idx, 0)
                    # pycocotools stops at the first recall threshold beyond the last detection (IndexError): 0
                    if nd:
                        precision[:, :, k, a, m] = np.where(ok, np.take_along_axis(pr, safe, axis=1), 0.0)
                        scores[:, :, k, a, m] = np.where(ok, sorted_scores[safe], 0.0)
                    else:
                        precision[:, :, k, a, m] = 0.0
                        scores[:, :, k, a, m] = 0.0
        return {"params": p, "counts": [T, R, K, A, M], "precision": precision, "recall": recall, "scores": scores}

    def run(self) -> COCOeval:
        groups = self._groups()
        matches = self._match(groups)
        evaluator = COCOeval(iouType=self.iou_type)
        evaluator.params = self.params
        evaluator.eval = self._accumulate(groups, matches)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
        return evaluator
