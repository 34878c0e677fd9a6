"""An exact, vectorised re-implementation of pycocotools' COCOeval (bbox / segm) for large result sets.

pycocotools spends its time in Python loops (evaluateImg's greedy matching, accumulate's per-threshold loops);
faster-coco-eval moves them to C++ but its precision values differ from pycocotools' in the last bit, so its AP can
differ at 1e-17. This module keeps every floating-point operation of pycocotools (the same IoU expressions, the
same sorts with the same stable order, the same tp / (fp + tp + eps) expressions) and only changes how the work is
batched: detections and ground truth live in flat arrays sorted (category, image, -score) with the same stable
order; bbox IoUs are computed for every same-group pair at once with maskApi.c's bbIou expression, operation for
operation (segm IoUs still come from pycocotools.mask.iou); greedy matching runs for all (image, category, area
range) groups at once, one detection rank at a time; accumulate works on whole arrays. summarize() is
pycocotools' own. tests/test_coco_eval_*.py check the 12 numbers and the precision arrays equal pycocotools'.
"""
import contextlib
import io
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

    def __init__(self, gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str,
                 max_dets: Sequence[int] = (1, 10, 100)):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"FastCOCOeval supports bbox and segm, got {iou_type!r}")
        self.gt, self.results, self.iou_type = gt, list(results), iou_type
        self.params = Params(iouType=iou_type)
        self.params.maxDets = list(max_dets)  # COCOeval params.maxDets: per-image caps, the last one for AP
        self.params.imgIds = sorted({img["id"] for img in gt["images"]})
        self.params.catIds = sorted({cat["id"] for cat in gt["categories"]})

    # -- grouping (COCOeval._prepare + computeIoU), as flat arrays sorted (category, image, -score) --------------
    def _prepare(self):
        p, gt, results = self.params, self.gt, self.results
        # COCO ids are any JSON ints (pycocotools keeps them as Python ints, 2**63 and above included), so they are
        # never put in numpy arrays: each becomes its rank among the sorted ids, which orders groups exactly as
        # the ids do and always fits int64 (issue 21).
        img_index = {image_id: k for k, image_id in enumerate(p.imgIds)}
        cat_index = {cat_id: k for k, cat_id in enumerate(p.catIds)}
        n_img, max_det = len(p.imgIds), p.maxDets[-1]
        # detections: stable sort by (category, image, -score) == pycocotools' per-(image, category) mergesort
        d_img = np.asarray([img_index[d["image_id"]] for d in results], dtype=np.int64)
        d_cat = np.asarray([cat_index[d["category_id"]] for d in results], dtype=np.int64)
        d_score = np.asarray([d["score"] for d in results], dtype=np.float64)
        d_area, d_box, d_segm = _prepare_results(results)
        order = np.lexsort((np.arange(len(results)), -d_score, d_img, d_cat))
        d_key = (d_cat * n_img + d_img)[order]
        starts = np.searchsorted(d_key, d_key, side="left")
        rank = np.arange(len(order)) - starts
        keep = rank < max_det  # computeIoU / evaluateImg keep the top maxDets[-1] per (image, category)
        det = dict(index=order[keep], key=d_key[keep], rank=rank[keep], score=d_score[order][keep],
                   area=d_area[order][keep], box=d_box[order][keep])
        # ground truth: (category, image, json order) == COCO.getAnnIds order within each (image, category)
        known_imgs, known_cats = set(p.imgIds), set(p.catIds)  # COCO.getAnnIds(imgIds, catIds) filters the same
        anns = [a for a in gt["annotations"] if a["image_id"] in known_imgs and a["category_id"] in known_cats]
        g_img = np.asarray([img_index[a["image_id"]] for a in anns], dtype=np.int64)
        g_cat = np.asarray([cat_index[a["category_id"]] for a in anns], dtype=np.int64)
        g_order = np.lexsort((np.arange(len(anns)), g_img, g_cat))
        crowd = np.asarray([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64)
        gts = dict(
            ann=[anns[i] for i in g_order], key=(g_cat * n_img + g_img)[g_order],
            area=np.asarray([a["area"] for a in anns], dtype=np.float64)[g_order],
            crowd=crowd[g_order].astype(bool),
            # COCOeval._prepare: gt["ignore"] = "iscrowd" in gt and gt["iscrowd"]
            ignore=np.asarray([bool("iscrowd" in a and a["iscrowd"]) for a in anns], dtype=bool)[g_order],
            # evaluateImg stores the matched gt's id in dtm and accumulate only asks whether it is non-zero (a gt
            # with id 0 counts as unmatched there): a non-zero code per annotation keeps exactly that, for any id
            id=np.asarray([0 if a["id"] == 0 else k + 1 for k, a in enumerate(anns)], dtype=np.int64)[g_order],
            box=np.asarray([a.get("bbox", [0, 0, 0, 0]) for a in anns], dtype=np.float64).reshape(-1, 4)[g_order],
        )
        keys = np.union1d(det["key"], gts["key"])  # every (category, image) group with a gt or a detection
        grp = dict(key=keys, cat=keys // n_img,
                   d_start=np.searchsorted(det["key"], keys, "left"), d_end=np.searchsorted(det["key"], keys, "right"),
                   g_start=np.searchsorted(gts["key"], keys, "left"), g_end=np.searchsorted(gts["key"], keys, "right"))
        grp["D"], grp["G"] = grp["d_end"] - grp["d_start"], grp["g_end"] - grp["g_start"]
        return det, gts, grp, d_segm

    def _pair_ious(self, det, gts, grp, d_segm):
        """IoU of every (detection, gt) pair of a group: flat arrays (group, d_local, g_local, iou)."""
        both = np.nonzero((grp["D"] > 0) & (grp["G"] > 0))[0]
        D, G = grp["D"][both], grp["G"][both]
        sizes = D * G
        group = np.repeat(both, sizes)
        offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        g_of_pair = np.repeat(G, sizes)
        d_local, g_local = offset // g_of_pair, offset % g_of_pair
        di = grp["d_start"][group] + d_local
        gi = grp["g_start"][group] + g_local
        if self.iou_type == "bbox" and "bbox" in self.results[0]:
            # pycocotools maskApi.c bbIou, operation for operation (IEEE double, same order)
            dx, dy, dw, dh = det["box"][di].T
            gx, gy, gw, gh = gts["box"][gi].T
            w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
            h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
            inter = w * h
            union = np.where(gts["crowd"][gi], dw * dh, dw * dh + gw * gh - inter)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where((w <= 0) | (h <= 0), 0.0, inter / union)
        else:
            iou = np.empty(len(group))
            images = {img["id"]: img for img in self.gt["images"]}
            pos = 0
            for g_index in both:
                ds, de, gs, ge = grp["d_start"][g_index], grp["d_end"][g_index], grp["g_start"][g_index], grp["g_end"][g_index]
                anns = gts["ann"][gs:ge]
                img = images[anns[0]["image_id"]]
                if self.iou_type == "segm":
                    g_obj = [_ann_to_rle(a["segmentation"], img["height"], img["width"]) for a in anns]
                    d_obj = [_ann_to_rle(d_segm[i], img["height"], img["width"]) for i in det["index"][ds:de]]
                else:
                    g_obj, d_obj = [a["bbox"] for a in anns], det["box"][ds:de].tolist()
                block = np.asarray(mask_util.iou(d_obj, g_obj, [int(a.get("iscrowd", 0)) for a in anns]))
                iou[pos: pos + block.size] = block.reshape(-1)
                pos += block.size
        return group, d_local, g_local, iou

    # -- matching (COCOeval.evaluateImg for every group and area range at once) ---------------------------------
    def _match(self, det, gts, grp, pairs):
        """Greedy matching of every group for every area range and IoU threshold, batched per padded size.

        Returns dtm [A, T, N] (matched gt id, 0 = none; N = kept detections in sorted order), dt_ignore [A, T, N]
        and the per-area gt ignore flags [A, Ngt].
        """
        p = self.params
        thresholds = np.asarray([min(t, 1 - 1e-10) for t in p.iouThrs])
        area_lo = np.asarray([r[0] for r in p.areaRng], dtype=np.float64)
        area_hi = np.asarray([r[1] for r in p.areaRng], dtype=np.float64)
        T, A, N = len(thresholds), len(p.areaRng), len(det["key"])
        dtm_all = np.zeros((A, T, N), dtype=np.int64)
        dtig_all = np.zeros((A, T, N), dtype=bool)
        gt_ig_all = gts["ignore"][None, :] | (gts["area"][None, :] < area_lo[:, None]) | \
            (gts["area"][None, :] > area_hi[:, None])  # [A, Ngt]
        p_group, p_d, p_g, p_iou = pairs
        # gathered with index 0 where no gt is (masked by valid_g): a set without any gt needs one dummy entry
        some_gt = gt_ig_all.shape[1] > 0
        gt_ig_g = gt_ig_all if some_gt else np.ones((A, 1), dtype=bool)
        crowd_g = gts["crowd"] if some_gt else np.zeros(1, dtype=bool)
        id_g = gts["id"] if some_gt else np.zeros(1, dtype=np.int64)
        g_pad_of = np.left_shift(1, np.ceil(np.log2(np.maximum(grp["G"], 1))).astype(np.int64))
        d_pad_of = np.left_shift(1, np.ceil(np.log2(np.maximum(grp["D"], 1))).astype(np.int64))
        has_dets = grp["D"] > 0
        bucket_key = g_pad_of * (1 << 20) + d_pad_of
        for key in np.unique(bucket_key[has_dets]):
            members = np.nonzero((bucket_key == key) & has_dets)[0]
            G_pad, D_pad = int(key >> 20), int(key & ((1 << 20) - 1))
            B = len(members)
            slot = np.full(len(grp["key"]), -1)
            slot[members] = np.arange(B)
            ious = np.full((B, D_pad, G_pad), -1.0)
            sel = slot[p_group] >= 0
            ious[slot[p_group[sel]], p_d[sel], p_g[sel]] = p_iou[sel]
            # gt attributes per slot: gather with a validity mask
            g_local = np.arange(G_pad)[None, :]
            valid_g = g_local < grp["G"][members][:, None]
            g_index = np.where(valid_g, grp["g_start"][members][:, None] + g_local, 0)
            ig = np.where(valid_g[:, None, :], gt_ig_g[:, g_index].transpose(1, 0, 2), True)  # [B, A, G]
            crowd = crowd_g[g_index] & valid_g
            gt_ids = np.where(valid_g, id_g[g_index], 0)
            # evaluateImg sorts gts with a stable argsort on _ignore: non-ignored first
            key_sort = ig.astype(np.int64) + 2 * (~valid_g)[:, None, :]
            order = np.argsort(key_sort, axis=2, kind="stable")
            ig_s = np.take_along_axis(ig, order, axis=2).reshape(B * A, G_pad)
            crowd_s = np.take_along_axis(np.broadcast_to(crowd[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            ids_s = np.take_along_axis(np.broadcast_to(gt_ids[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            valid_s = np.take_along_axis(np.broadcast_to(valid_g[:, None, :], (B, A, G_pad)), order, 2).reshape(B * A, G_pad)
            ious_s = np.take_along_axis(ious[:, None, :, :], order[:, :, None, :], axis=3).reshape(B * A, D_pad, G_pad)
            n_dt_s = np.repeat(grp["D"][members], A)
            BA = B * A
            gt_taken = np.zeros((BA, T, G_pad), dtype=bool)
            dt_match = np.zeros((BA, T, D_pad), dtype=np.int64)
            dt_ig = np.zeros((BA, T, D_pad), dtype=bool)
            thr = thresholds[None, :, None]
            for d in range(D_pad):
                rows = np.nonzero(n_dt_s > d)[0]
                if rows.size == 0:
                    break
                iou_d = ious_s[rows, d, :][:, None, :]  # [R, 1, G]
                # a gt already matched at this threshold is skipped unless it is a crowd region
                available = valid_s[rows, None, :] & (~gt_taken[rows] | crowd_s[rows, None, :])
                candidate = available & (iou_d >= thr)
                chosen = np.full((rows.size, T), -1, dtype=np.int64)
                not_ig = ~ig_s[rows, None, :]
                for pass_mask in (not_ig, ~not_ig):  # ignored gts only when no non-ignored one matched
                    cand = candidate & pass_mask & (chosen == -1)[:, :, None]
                    masked = np.where(cand, iou_d, -np.inf)
                    # pycocotools keeps the LAST gt reaching the running best (`if iou < best: continue`)
                    last = G_pad - 1 - np.argmax(masked[:, :, ::-1], axis=2)
                    chosen = np.where(cand.any(axis=2), last, chosen)
                r_idx, t_idx = np.nonzero(chosen >= 0)
                m_idx = chosen[r_idx, t_idx]
                b_idx = rows[r_idx]
                dt_match[b_idx, t_idx, d] = ids_s[b_idx, m_idx]
                dt_ig[b_idx, t_idx, d] = ig_s[b_idx, m_idx]
                gt_taken[b_idx, t_idx, m_idx] = True
            # scatter back to the flat detection order
            d_local = np.arange(D_pad)[None, :]
            valid_d = d_local < grp["D"][members][:, None]
            b_of, d_of = np.nonzero(valid_d)
            flat = grp["d_start"][members][b_of] + d_of
            dt_match = dt_match.reshape(B, A, T, D_pad)[b_of, :, :, d_of]  # [n, A, T]
            dt_ig = dt_ig.reshape(B, A, T, D_pad)[b_of, :, :, d_of]
            dtm_all[:, :, flat] = dt_match.transpose(1, 2, 0)
            dtig_all[:, :, flat] = dt_ig.transpose(1, 2, 0)
        outside = (det["area"][None, :] < area_lo[:, None]) | (det["area"][None, :] > area_hi[:, None])  # [A, N]
        dtig_all |= (dtm_all == 0) & outside[:, None, :]
        return dtm_all, dtig_all, gt_ig_all

    # -- accumulate (COCOeval.accumulate, array-wise) -----------------------------------------------------------
    def _accumulate(self, det, gts, grp, dtm_all, dtig_all, gt_ig_all) -> Dict[str, np.ndarray]:
        p = self.params
        T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        n_img = len(p.imgIds)
        det_cat = det["key"] // n_img
        gt_cat = gts["key"] // n_img
        npig_all = np.zeros((A, K), dtype=np.int64)
        for a in range(A):
            npig_all[a] = np.bincount(gt_cat[~gt_ig_all[a]], minlength=K)
        eps = np.spacing(1)
        cat_start = np.searchsorted(det_cat, np.arange(K), "left")
        cat_end = np.searchsorted(det_cat, np.arange(K), "right")
        for k in np.unique(grp["cat"]):  # categories with at least one (image, category) evaluation
            s, e = cat_start[k], cat_end[k]
            ranks, all_scores = det["rank"][s:e], det["score"][s:e]
            for a in range(A):
                npig = int(npig_all[a, k])
                if npig == 0:
                    continue
                for m, max_det in enumerate(p.maxDets):
                    keep = ranks < max_det
                    det_scores = all_scores[keep]
                    inds = np.argsort(-det_scores, kind="mergesort")
                    sorted_scores = det_scores[inds]
                    dtm = dtm_all[a, :, s:e][:, keep][:, inds]
                    dtig = dtig_all[a, :, s:e][:, keep][:, inds]
                    tps = np.logical_and(dtm, np.logical_not(dtig))
                    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
                    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
                    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
                    nd = tp_sum.shape[1]
                    rc = tp_sum / npig
                    pr = tp_sum / (fp_sum + tp_sum + eps)
                    recall[:, k, a, m] = rc[:, -1] if nd else 0
                    if not nd:
                        precision[:, :, k, a, m] = 0.0
                        scores[:, :, k, a, m] = 0.0
                        continue
                    # precision envelope: pr[i-1] = max(pr[i-1], pr[i]) from the end (max is exact)
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    idx = np.stack([np.searchsorted(rc[t], p.recThrs, side="left") for t in range(T)])  # [T, R]
                    ok = idx < nd
                    safe = np.where(ok, idx, 0)
                    # pycocotools stops at the first recall threshold beyond the last detection (IndexError): 0
                    precision[:, :, k, a, m] = np.where(ok, np.take_along_axis(pr, safe, axis=1), 0.0)
                    scores[:, :, k, a, m] = np.where(ok, sorted_scores[safe], 0.0)
        return {"params": p, "counts": [T, R, K, A, M], "precision": precision, "recall": recall, "scores": scores}

    def run(self) -> COCOeval:
        det, gts, grp, d_segm = self._prepare()
        pairs = self._pair_ious(det, gts, grp, d_segm)
        dtm, dtig, gt_ig = self._match(det, gts, grp, pairs)
        evaluator = COCOeval(iouType=self.iou_type)
        evaluator.params = self.params
        evaluator.eval = self._accumulate(det, gts, grp, dtm, dtig, gt_ig)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
        return evaluator
